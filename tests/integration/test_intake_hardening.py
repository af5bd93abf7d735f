"""The HTTP face under hostile input (docs/security.md): body caps, unparsable bodies, blank
secrets, odd webhook tokens, a dead database, and /metrics behind its token. In-process ASGI over
a real database, as test_http.py."""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from orchestrator import http as klein_http
from orchestrator import serve
from orchestrator.db import Database
from orchestrator.errors import ConfigError
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from tests.integration.clikit import klein
from tests.integration.test_http import (
    RecordingWaker,
    closed_port,
    insert_job,
    supabase_body,
)

SECRET = "s3cret-webhook-value"
MiB = 1024 * 1024


def settings_with(**values: object) -> Settings:
    """Settings as the environment would give them, plus values."""
    return Settings(database_url="unused", **values)


class CountingBody:
    """A streamed request body of `total` bytes that records how much the app pulled."""

    def __init__(self, total: int, chunk: int = 64 * 1024) -> None:
        self.total, self.chunk, self.sent = total, chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.sent < self.total:
            piece = min(self.chunk, self.total - self.sent)
            self.sent += piece
            yield b" " * piece


def request(
    url: str,
    method: str,
    path: str,
    *,
    settings: Settings | None = None,
    waker: RecordingWaker | None = None,
    metrics: Metrics | None = None,
    open_pool: bool = True,
    **options: object,
) -> httpx.Response:
    """One request to a fresh app over the database at url, within a 10 s deadline."""

    async def run() -> httpx.Response:
        db = Database(url, max_size=2)
        await (db.open() if open_pool else db.pool.open(wait=False))
        try:
            app = klein_http.create_app(
                settings or settings_with(), db, waker or RecordingWaker(), metrics or Metrics()
            )
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://klein") as client:
                return await asyncio.wait_for(client.request(method, path, **options), 10)
        finally:
            await db.close()

    return asyncio.run(run())


def dead_database_url() -> str:
    """A database URL nothing answers at."""
    return f"postgresql://nobody@127.0.0.1:{closed_port()}/none?connect_timeout=1"


# --------------------------------------------------------------------------- body caps


@pytest.mark.parametrize("size", [3 * MiB, 10 * MiB], ids=["3MB", "10MB"])
def test_an_oversized_intake_body_is_413(migrated_url, size):
    waker = RecordingWaker()
    body = b'{"record": {"id": "' + b"a" * size + b'"}}'
    response = request(migrated_url, "POST", "/webhook/klein_i2i", waker=waker, content=body)
    assert response.status_code == 413
    assert "over 65536 bytes" in response.json()["error"]
    assert waker.nudges == []


def test_a_streamed_intake_body_is_cut_off_at_the_cap_not_read_whole(migrated_url):
    body = CountingBody(10 * MiB)  # chunked: no Content-Length to go by
    response = request(migrated_url, "POST", "/webhook/klein_i2i", content=body)
    assert response.status_code == 413
    assert body.sent <= klein_http.INTAKE_MAX_BYTES + body.chunk


def test_a_declared_content_length_over_the_cap_is_413_before_any_byte_is_read(migrated_url):
    body = CountingBody(10 * MiB)
    headers = {"Content-Length": str(10 * MiB)}
    response = request(migrated_url, "POST", "/webhook/klein_i2i", content=body, headers=headers)
    assert response.status_code == 413
    assert body.sent == 0


def test_a_body_under_the_cap_is_still_read(migrated_url):
    job_id = insert_job(migrated_url)
    padded = supabase_body(job_id) | {"padding": "x" * (klein_http.INTAKE_MAX_BYTES - 1024)}
    response = request(migrated_url, "POST", "/webhook/klein_i2i", json=padded)
    assert response.status_code == 200
    assert response.json()["accepted"] is True


# --------------------------------------------------------------------------- unparsable bodies


@pytest.mark.parametrize(
    "content",
    [b"[" * 60_000, b'{"a":' * 12_000, b"[" * 30_000 + b"]" * 30_000],
    ids=["open-arrays", "open-objects", "balanced-arrays"],
)
def test_deeply_nested_json_is_a_422_not_a_500(migrated_url, content):
    response = request(migrated_url, "POST", "/webhook/klein_i2i", content=content)
    assert response.status_code == 422
    assert response.json()["error"] == "malformed body: the JSON is nested too deeply"


def test_nesting_beyond_the_cap_is_a_413_not_a_500(migrated_url):
    response = request(migrated_url, "POST", "/webhook/klein_i2i", content=b"[" * 100_000)
    assert response.status_code == 413


# --------------------------------------------------------------------------- blank secrets


@pytest.mark.parametrize("blank", ["", "   "], ids=["empty", "spaces"])
@pytest.mark.parametrize("name", ["WEBHOOK_SECRET", "METRICS_TOKEN"])
def test_a_set_but_blank_secret_refuses_to_build_the_app(migrated_url, name, blank):
    settings = settings_with(**{name.lower(): blank})
    with pytest.raises(ConfigError, match=f"unset {name} or set it to a real secret"):
        request(migrated_url, "GET", "/healthz", settings=settings)


def test_klein_serve_with_an_empty_webhook_secret_exits_2_with_one_sentence(migrated_url):
    env = {
        "PATH": "/usr/bin:/bin",
        "WEBHOOK_SECRET": "",
        "RUNPOD_ENDPOINT_ID": "x",
        "RUNPOD_API_BASE": "http://127.0.0.1:9/v2",
    }
    done = klein("serve", "--port", "0", database_url=migrated_url, env=env, timeout_s=30)
    assert done.returncode == 2
    assert done.stderr.startswith("klein serve: WEBHOOK_SECRET is set but empty")
    assert "unset WEBHOOK_SECRET or set it to a real secret" in done.stderr
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- RunPod's webhook


@pytest.mark.parametrize(
    "path",
    [
        "/runpod/webhook/%00",
        "/runpod/webhook/tok%00known",
        "/runpod/webhook/" + "a" * 10_000,
        "/runpod/webhook/%C3%A9t%C3%A9",
        "/runpod/webhook/tok-unknown",
    ],
    ids=["nul", "nul-inside", "too-long", "not-ascii", "unknown"],
)
def test_runpod_webhook_with_a_malformed_or_unknown_token_is_404(migrated_url, path):
    insert_job(migrated_url, status="taken", token="tok-known")
    waker = RecordingWaker()
    response = request(migrated_url, "POST", path, waker=waker, json={"status": "COMPLETED"})
    assert response.status_code == 404
    assert response.json() == {"error": "unknown webhook token"}
    assert waker.woken == []


def test_runpod_webhook_answers_503_within_the_deadline_when_the_database_is_down():
    started = time.monotonic()
    response = request(
        dead_database_url(), "POST", "/runpod/webhook/tok-any", open_pool=False, json={}
    )
    assert response.status_code == 503
    assert response.json() == {"error": "database unavailable; retry later"}
    assert time.monotonic() - started < 8  # the route's bound is 2 s; 30 s before


def test_intake_answers_503_within_the_deadline_when_the_database_is_down():
    body = supabase_body(str(uuid.uuid4()))
    response = request(
        dead_database_url(), "POST", "/webhook/klein_i2i", open_pool=False, json=body
    )
    assert response.status_code == 503


def test_runpod_webhook_takes_a_multi_megabyte_result_under_its_default_cap(migrated_url):
    token = "tok-" + uuid.uuid4().hex
    job_id = insert_job(migrated_url, status="taken", token=token)
    waker = RecordingWaker()
    body = {"id": "rp-1", "status": "COMPLETED", "output": {"image": "A" * (6 * MiB)}}
    response = request(migrated_url, "POST", f"/runpod/webhook/{token}", waker=waker, json=body)
    assert response.status_code == 200
    assert waker.woken == [job_id]


def test_runpod_webhook_over_its_cap_is_413_and_stops_reading(migrated_url):
    token = "tok-" + uuid.uuid4().hex
    insert_job(migrated_url, status="taken", token=token)
    waker = RecordingWaker()
    body = CountingBody(40 * MiB)
    settings = settings_with(runpod_webhook_max_bytes=MiB)
    path = f"/runpod/webhook/{token}"
    response = request(migrated_url, "POST", path, settings=settings, waker=waker, content=body)
    assert response.status_code == 413
    assert "RUNPOD_WEBHOOK_MAX_BYTES" in response.json()["error"]
    assert body.sent <= MiB + body.chunk
    assert waker.woken == []


# --------------------------------------------------------------------------- /metrics


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "metrics-token-1"}],
    ids=["missing", "wrong", "not-bearer"],
)
def test_metrics_with_a_token_set_refuse_a_missing_or_wrong_bearer(migrated_url, headers):
    settings = settings_with(metrics_token="metrics-token-1")
    response = request(migrated_url, "GET", "/metrics", settings=settings, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "metrics-token-1" not in response.text
    assert "klein_jobs_total" not in response.text


@pytest.mark.parametrize(
    "authorization",
    ["Bearer metrics-token-1", "bearer metrics-token-1", "BEARER  metrics-token-1"],
)
def test_metrics_with_a_token_set_answer_the_right_bearer(migrated_url, authorization):
    settings = settings_with(metrics_token="metrics-token-1")
    headers = {"Authorization": authorization}  # RFC 9110: the scheme in any case
    response = request(migrated_url, "GET", "/metrics", settings=settings, headers=headers)
    assert response.status_code == 200
    assert "# TYPE klein_jobs_total counter" in response.text


@pytest.mark.parametrize("name", ["WEBHOOK_SECRET", "METRICS_TOKEN", "DASHBOARD_TOKEN"])
@pytest.mark.parametrize("value", [" padded", "padded ", "tök", "tab\there"])
def test_a_secret_no_header_could_carry_refuses_to_build_the_app(migrated_url, name, value):
    settings = settings_with(**{name.lower(): value})
    with pytest.raises(ConfigError, match=f"{name} must be printable ASCII"):
        request(migrated_url, "GET", "/healthz", settings=settings)


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/nowhere", 404), ("POST", "/healthz", 405)]
)
def test_an_unknown_route_or_method_answers_in_the_house_shape(migrated_url, method, path, status):
    response = request(migrated_url, method, path)
    assert response.status_code == status
    assert set(response.json()) == {"error"}
    if status == 405:
        assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}


@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [
        ("0.0.0.0", None, True),
        ("192.0.2.10", None, True),
        ("0.0.0.0", "metrics-token-1", False),
        ("127.0.0.1", None, False),
        ("::1", None, False),
        ("localhost", None, False),
    ],
)
def test_serving_open_metrics_beyond_loopback_is_warned_at_start(caplog, host, token, warned):
    caplog.set_level(logging.WARNING, logger="orchestrator.serve")
    serve.check_http_face(settings_with(metrics_token=token), serve.Address(host, 8080))
    assert ("METRICS_TOKEN is not set" in caplog.text) is warned
