"""Whatever anyone posts to the webhooks, the app answers with a status it means (never a 500)
and never raises: arbitrary JSON values and arbitrary bytes, over a real migrated database."""

import asyncio
import json
import re
import urllib.parse
from collections.abc import Callable, Iterator

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from orchestrator.db import Database
from orchestrator.http import create_app
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from tests.integration.test_http import RecordingWaker, insert_job

Post = Callable[..., httpx.Response]

KNOWN_TOKEN = "tok-known-property"
EXAMPLES = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
# Bodies shaped like a Database Webhook's, with anything where the job id goes.
near_misses = st.builds(
    lambda record_id, wrap: (
        {"body": {"record": {"id": record_id}}}
        if wrap
        else {"type": "INSERT", "record": {"id": record_id}}
    ),
    json_values | st.uuids().map(str),
    st.booleans(),
)


@pytest.fixture
def post(migrated_url: str) -> Iterator[Post]:
    """POST to one app over one pool, kept open across hypothesis's examples."""
    insert_job(migrated_url, status="taken", token=KNOWN_TOKEN)
    loop = asyncio.new_event_loop()
    db = Database(migrated_url, max_size=2)
    loop.run_until_complete(db.open())
    app = create_app(Settings(database_url="unused"), db, RecordingWaker(), Metrics())
    # raise_app_exceptions (the default): an exception inside the app fails the test.
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://klein")

    def send(path: str, content: bytes) -> httpx.Response:
        return loop.run_until_complete(client.post(path, content=content))

    try:
        yield send
    finally:
        loop.run_until_complete(client.aclose())
        loop.run_until_complete(db.close())
        loop.close()


def dumps(value: object) -> bytes:
    """JSON as a sender would write it (NaN and Infinity included, as Python writes them)."""
    return json.dumps(value).encode()


@EXAMPLES
@given(body=json_values | near_misses)
def test_intake_answers_any_json_value_with_200_or_422(post, body):
    response = post("/webhook/klein_i2i", dumps(body))
    assert response.status_code in (200, 422)
    assert response.json()


@EXAMPLES
@given(body=st.binary(max_size=2048))
@example(body=b"[" * 60_000)
@example(body=b"\xff\xfe")
def test_intake_answers_any_bytes_with_200_or_422(post, body):
    response = post("/webhook/klein_i2i", body)
    assert response.status_code in (200, 422)


@EXAMPLES
@given(token=st.text(max_size=200), body=st.binary(max_size=512))
@example(token="\x00", body=b"")
@example(token="a" * 5000, body=b"{}")
@example(token=KNOWN_TOKEN, body=b"\x00")
def test_runpod_webhook_answers_any_token_and_bytes_without_a_500(post, token, body):
    path = "/runpod/webhook/" + urllib.parse.quote(token, safe="")
    response = post(path, body)
    # Routing answers "", "." and ".." (no such route: 404, 405) and a trailing "/" (307); a
    # body naming an id that is not RunPod's is 422.
    assert response.status_code in (200, 307, 404, 405, 422)


def names_a_foreign_id(body: object) -> bool:
    """Whether a body names an `"id"` that is not RunPod-shaped (letters, digits, dashes)."""
    if not isinstance(body, dict) or body.get("id") is None:
        return False
    job_id = body["id"]
    return not (isinstance(job_id, str) and re.fullmatch(r"[A-Za-z0-9-]{1,100}", job_id))


@EXAMPLES
@given(body=json_values | st.binary(max_size=1024).map(lambda raw: raw.decode("latin-1")))
@example(body={"id": "../purge-queue", "status": "COMPLETED"})
@example(body={"id": 7})
@example(body={"id": "c80ffee4-0000-4000-8000-000000000001-u1", "status": "COMPLETED"})
def test_runpod_webhook_with_a_known_token_answers_any_body_with_200_or_422(post, body):
    """200 for any body, except 422 for one naming an id that is not RunPod's (it would go
    into a RunPod URL and the log)."""
    response = post(f"/runpod/webhook/{KNOWN_TOKEN}", dumps(body))
    assert response.status_code == (422 if names_a_foreign_id(body) else 200)
