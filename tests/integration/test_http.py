"""The orchestrator's HTTP app, served in-process (httpx's ASGI transport) over a real database:
the intake webhook, RunPod's completion webhook, health, readiness, metrics, local files."""

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import psycopg
import pytest

from orchestrator.db import Database
from orchestrator.http import create_app
from orchestrator.metrics import Metrics
from orchestrator.settings import KLEIN_TEMPLATE_ID, Settings

SECRET = "s3cret-webhook-value"


class RecordingWaker:
    """Stands in for the running orchestrator: records what the app asked of it."""

    def __init__(self) -> None:
        self.nudges: list[str] = []
        self.woken: list[str] = []
        self.callbacks: list[tuple[str, str | None]] = []

    def nudge(self, source: str = "other") -> None:
        self.nudges.append(source)

    def wake_job(self, job_id: str) -> bool:
        self.woken.append(job_id)
        return True

    async def delivery_for(self, job_id: str):
        return None

    async def open_delivery(self, delivery) -> str | None:
        return None  # never called: delivery_for keeps no body

    async def runpod_callback(self, token: str, job, runpod_id: str | None, delivery=None) -> None:
        self.callbacks.append((token, runpod_id))
        self.wake_job(str(job["id"]))

    operator_problems: dict[str, str] = {}  # noqa: RUF012 - read-only here


@asynccontextmanager
async def app_client(
    db: Database,
    waker: RecordingWaker,
    *,
    metrics: Metrics | None = None,
    storage_root: Path | None = None,
    webhook_secret: str | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(database_url="unused", webhook_secret=webhook_secret)
    app = create_app(settings, db, waker, metrics or Metrics(), storage_root)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://klein") as client:
        yield client


def call(url, method, path, waker=None, **options) -> httpx.Response:
    """One request to a fresh app over the database at url (options: app_client's, httpx's)."""
    app_options = {
        key: options.pop(key)
        for key in ("metrics", "storage_root", "webhook_secret")
        if key in options
    }

    async def run() -> httpx.Response:
        db = Database(url, max_size=2)
        await db.open()
        try:
            async with app_client(db, waker or RecordingWaker(), **app_options) as client:
                return await client.request(method, path, **options)
        finally:
            await db.close()

    return asyncio.run(run())


def insert_job(url, *, template_id=KLEIN_TEMPLATE_ID, status="pending", token=None) -> str:
    """A job and its work; returns the job id."""
    work_id, job_id = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO templates (id, template_name, is_active) VALUES (%s, 'other', true) "
            "ON CONFLICT (id) DO NOTHING",
            (template_id,),
        )
        conn.execute(
            "INSERT INTO works (id, user_id, template_id, input_data) VALUES (%s, %s, %s, '{}')",
            (work_id, uuid.uuid4(), template_id),
        )
        conn.execute(
            "INSERT INTO generation_jobs (id, work_id, status) VALUES (%s, %s, %s)",
            (job_id, work_id, status),
        )
        if token is not None:
            conn.execute(
                "INSERT INTO generation_job_tokens (job_id, webhook_token) VALUES (%s, %s)",
                (job_id, token),
            )
    return str(job_id)


def supabase_body(job_id: str) -> dict:
    """What a Supabase Database Webhook sends on INSERT."""
    return {
        "type": "INSERT",
        "table": "generation_jobs",
        "schema": "public",
        "record": {"id": job_id, "status": "pending"},
        "old_record": None,
    }


def seed_body(job_id: str) -> dict:
    """The seed's wrapped shape."""
    return {"body": {"record": {"id": job_id}}}


# --------------------------------------------------------------------------- intake webhook


@pytest.mark.parametrize("shape", [supabase_body, seed_body], ids=["supabase", "seed"])
def test_a_pending_klein_job_is_accepted_and_wakes_the_claimer(migrated_url, shape):
    job_id = insert_job(migrated_url)
    waker = RecordingWaker()
    response = call(migrated_url, "POST", "/webhook/klein_i2i", waker, json=shape(job_id))
    assert response.status_code == 200
    assert response.json() == {"job_id": job_id, "accepted": True}
    assert waker.nudges == ["webhook"]


@pytest.mark.parametrize(
    ("make_job", "reason"),
    [
        (lambda url: str(uuid.uuid4()), "unknown job"),
        (lambda url: insert_job(url, template_id=str(uuid.uuid4())), "not a Klein job"),
        (lambda url: insert_job(url, status="completed"), "job is completed"),
    ],
    ids=["unknown", "other-template", "finished"],
)
def test_a_job_that_is_not_ours_to_run_is_declined_without_waking(migrated_url, make_job, reason):
    job_id = make_job(migrated_url)
    waker = RecordingWaker()
    response = call(migrated_url, "POST", "/webhook/klein_i2i", waker, json=supabase_body(job_id))
    assert response.status_code == 200
    assert response.json() == {"job_id": job_id, "accepted": False, "reason": reason}
    assert waker.nudges == []


@pytest.mark.parametrize("old_id", ["pending", "unknown", None])
def test_a_delete_event_is_answered_as_nothing_to_run(migrated_url, old_id):
    """A Database Webhook set up for every event also sends DELETEs (record null, the row in
    old_record): nothing to run, not a malformed body (it was a 422 that Supabase logs)."""
    job_id = {"pending": lambda: insert_job(migrated_url), "unknown": lambda: str(uuid.uuid4())}
    deleted = job_id[old_id]() if old_id else None
    body = supabase_body(deleted or str(uuid.uuid4())) | {
        "type": "DELETE",
        "record": None,
        "old_record": {"id": deleted} if deleted else None,
    }
    waker = RecordingWaker()
    response = call(migrated_url, "POST", "/webhook/klein_i2i", waker, json=body)
    assert response.status_code == 200
    assert response.json() == {
        "job_id": deleted,
        "accepted": False,
        "reason": "a DELETE event: nothing to run",
    }
    assert waker.nudges == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"record": {"id": ', "malformed body: Expecting value"),
        (b"\xff\xfe not utf-8", "malformed body: "),
        (b'{"type": "INSERT", "table": "generation_jobs"}', 'expected {"record": {"id": '),
        (b'{"record": {"status": "pending"}}', 'expected {"record": {"id": '),
        (b'{"record": {"id": 42}}', 'expected {"record": {"id": '),
        (b"[1, 2]", 'expected {"record": {"id": '),
        (b'{"record": {"id": "not-a-uuid"}}', "record.id must be a UUID"),
    ],
    ids=["truncated", "not-utf8", "no-record", "no-id", "id-not-text", "array", "not-uuid"],
)
def test_a_malformed_intake_body_is_a_422_that_says_what_is_wrong(migrated_url, content, message):
    waker = RecordingWaker()
    response = call(
        migrated_url,
        "POST",
        "/webhook/klein_i2i",
        waker,
        content=content,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error.startswith("malformed body: ")
    assert message in error
    assert waker.nudges == []


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Webhook-Secret": "wrong"}, {"X-Webhook-Secret": ""}],
    ids=["missing", "wrong", "empty"],
)
def test_the_intake_webhook_refuses_a_missing_or_wrong_secret(migrated_url, headers):
    job_id = insert_job(migrated_url)
    waker = RecordingWaker()
    response = call(
        migrated_url,
        "POST",
        "/webhook/klein_i2i",
        waker,
        json=supabase_body(job_id),
        headers=headers,
        webhook_secret=SECRET,
    )
    assert response.status_code == 401
    assert "X-Webhook-Secret" in response.json()["error"]
    assert waker.nudges == []


def test_the_intake_webhook_accepts_the_right_secret(migrated_url):
    job_id = insert_job(migrated_url)
    waker = RecordingWaker()
    response = call(
        migrated_url,
        "POST",
        "/webhook/klein_i2i",
        waker,
        json=supabase_body(job_id),
        headers={"X-Webhook-Secret": SECRET},
        webhook_secret=SECRET,
    )
    assert response.status_code == 200
    assert response.json()["accepted"] is True
    assert waker.nudges == ["webhook"]


# --------------------------------------------------------------------------- RunPod's webhook


def test_runpod_completion_webhook_hands_its_token_and_runpod_id_to_the_orchestrator(
    migrated_url,
):
    token = "tok-" + uuid.uuid4().hex
    job_id = insert_job(migrated_url, status="taken", token=token)
    insert_job(migrated_url, status="taken", token="tok-someone-else")
    waker = RecordingWaker()
    body = {"id": "rp-1", "status": "COMPLETED", "output": {"image": "..."}}
    response = call(migrated_url, "POST", f"/runpod/webhook/{token}", waker, json=body)
    assert response.status_code == 200
    assert waker.callbacks == [(token, "rp-1")]
    assert waker.woken == [job_id]


def test_a_large_runpod_webhook_wakes_its_recorded_job_before_the_body_is_read_and_gives_its_id(
    migrated_url,
):
    token = "tok-" + uuid.uuid4().hex
    job_id = insert_job(migrated_url, status="taken", token=token)
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute("UPDATE generation_jobs SET runpod_job_id = 'rp-1' WHERE id = %s", (job_id,))
    waker = RecordingWaker()
    image = "A" * (3 * 1024 * 1024)  # a whole output, as RunPod sends it: not kept, not parsed
    body = {"id": "rp-1", "status": "COMPLETED", "output": {"image": image, "prompt_id": "p"}}
    response = call(migrated_url, "POST", f"/runpod/webhook/{token}", waker, json=body)
    assert response.status_code == 200
    assert waker.callbacks == [(token, "rp-1")]
    assert waker.woken == [job_id, job_id]  # once on the row alone, once by the callback


def test_runpod_webhook_with_an_unknown_token_is_a_404_and_ignored(migrated_url):
    insert_job(migrated_url, status="taken", token="tok-known")
    waker = RecordingWaker()
    response = call(
        migrated_url, "POST", "/runpod/webhook/tok-unknown", waker, json={"status": "COMPLETED"}
    )
    # Tells a prober nothing beyond "no such token"; more cases in test_intake_hardening.py.
    assert response.status_code == 404
    assert waker.callbacks == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/runpod/webhook/tok-known/"),
        ("POST", "/webhook/klein_i2i/"),
        ("GET", "/healthz/"),
        ("GET", "/openapi.json"),
    ],
)
def test_no_path_redirects_or_lists_the_routes(migrated_url, method, path):
    """A trailing slash was answered 307 with a Location built from the Host header (before any
    secret or token was checked), and /openapi.json listed every route to anyone."""
    insert_job(migrated_url, status="taken", token="tok-known")
    waker = RecordingWaker()
    response = call(
        migrated_url, method, path, waker, headers={"Host": "evil.example"}, json={"id": "rp-1"}
    )
    assert response.status_code in (404, 405)
    assert "location" not in response.headers
    assert set(response.json()) == {"error"}
    assert waker.callbacks == []


# --------------------------------------------------------------------------- health, metrics


def test_healthz_answers_without_the_database(migrated_url):
    response = call(migrated_url, "GET", "/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_is_200_when_the_database_answers(migrated_url):
    response = call(migrated_url, "GET", "/readyz")
    assert (response.status_code, response.json()) == (200, {"status": "ready"})


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_probes_answer_head_as_they_answer_get(migrated_url, path):
    """Load balancers and uptime monitors often probe with HEAD; it was 405."""
    assert call(migrated_url, "HEAD", path).status_code == 200


def closed_port() -> int:
    """A local port nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_readyz_is_503_within_seconds_when_the_database_is_unreachable():
    url = f"postgresql://nobody@127.0.0.1:{closed_port()}/none?connect_timeout=1"

    async def run() -> httpx.Response:
        db = Database(url)
        # As a running orchestrator whose database went away: the pool keeps trying in the
        # background, and ping gives up after its own 2 s timeout.
        await db.pool.open(wait=False)
        try:
            async with app_client(db, RecordingWaker()) as client:
                return await asyncio.wait_for(client.get("/readyz"), timeout=10)
        finally:
            await db.close()

    response = asyncio.run(run())
    assert (response.status_code, response.json()) == (503, {"status": "database unreachable"})


def test_metrics_are_exposed_in_prometheus_text(migrated_url):
    metrics = Metrics()
    metrics.jobs.labels("completed").inc(3)
    metrics.calls.labels("runpod", "200").inc()
    metrics.stage_seconds.labels("await").observe(1.5)
    response = call(migrated_url, "GET", "/metrics", metrics=metrics)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    text = response.text
    assert 'klein_jobs_total{outcome="completed"} 3.0' in text
    assert 'klein_remote_calls_total{outcome="200",service="runpod"} 1.0' in text
    assert 'klein_stage_seconds_count{stage="await"} 1.0' in text
    for family in ("klein_jobs_in_flight", "klein_wakeups_total"):
        assert f"# TYPE {family} " in text


# --------------------------------------------------------------------------- local storage


@pytest.fixture
def storage_root(tmp_path: Path) -> Path:
    """storage/ with one stored PNG, next to files the app must never serve."""
    root = tmp_path / "storage"
    target = root / "works" / "u1" / "w1" / "output.png"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    (tmp_path / "pyproject.toml").write_text("outside the storage folder")
    return root


def test_storage_serves_a_stored_file(migrated_url, storage_root):
    path = "/storage/works/u1/w1/output.png"
    response = call(migrated_url, "GET", path, storage_root=storage_root)
    assert response.status_code == 200
    assert response.content == b"\x89PNG\r\n\x1a\nfake"
    assert response.headers["content-type"] == "image/png"


def test_storage_answers_404_for_a_missing_file(migrated_url, storage_root):
    path = "/storage/works/u1/w2/output.png"
    response = call(migrated_url, "GET", path, storage_root=storage_root)
    assert response.status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/storage/../pyproject.toml",  # httpx normalises this one before sending
        "/storage/%2e%2e/pyproject.toml",
        "/storage/..%2fpyproject.toml",
        "/storage/%2E%2E%2Fpyproject.toml",
        "/storage/works/%2e%2e/%2e%2e/pyproject.toml",
    ],
)
def test_storage_never_serves_outside_its_folder(migrated_url, storage_root, path):
    response = call(migrated_url, "GET", path, storage_root=storage_root)
    assert response.status_code == 404
    assert "outside the storage folder" not in response.text
