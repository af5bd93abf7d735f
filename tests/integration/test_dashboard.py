"""The dashboard's HTTP side, served in-process (httpx's ASGI transport, with the client address
chosen) over a real database: what /dashboard.json says about jobs in every state, the access
rules (DASHBOARD_TOKEN, or this machine only), and the stage timings the real flow records."""

import asyncio
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import pytest

from orchestrator.dashboard.routes import SECURITY_HEADERS, close_dashboard
from orchestrator.db import Database
from orchestrator.errors import ConfigError
from orchestrator.http import create_app
from orchestrator.jobs import Outcome
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from orchestrator.timings import STAGES
from tests.integration.dashkit import (
    BAD_STEPS,
    FULL_TIMINGS,
    HOSTILE_PROMPT,
    OOM,
    RETRY_ERROR,
    complete_by_sql,
    seed_every_state,
)
from tests.integration.flowkit import ScriptedWorker, drive, insert, png_b64, rows
from tests.integration.test_http import RecordingWaker

LOOPBACK = ("127.0.0.1", 50000)
REMOTE = ("203.0.113.9", 50000)
TOKEN = "dash-token-0123456789"
STATIC_DIR = Path(__file__).resolve().parents[2] / "orchestrator" / "dashboard" / "static"


def get(url, path, *, client=LOOPBACK, token=None, **options) -> httpx.Response:
    """GET path from a fresh app over the database at url, as seen from `client`."""

    async def run() -> httpx.Response:
        db = Database(url, max_size=2)
        await db.open()
        try:
            settings = Settings(database_url="unused", dashboard_token=token)
            app = create_app(settings, db, RecordingWaker(), Metrics())
            transport = httpx.ASGITransport(app, client=client)
            try:
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://localhost"
                ) as http:
                    return await http.get(path, **options)
            finally:
                await close_dashboard(app)
        finally:
            await db.close()

    return asyncio.run(run())


def by_id(snapshot) -> dict[str, dict]:
    return {job["job_id"]: job for job in snapshot["jobs"]}


def test_the_snapshot_shows_jobs_in_every_state(migrated_url):
    seeded = seed_every_state(migrated_url)
    for name, age_s in (("done-10s", 10), ("done-20s", 20), ("done-30s", 30)):
        complete_by_sql(migrated_url, name, seeded, f"http://img.test/{name}.png", age_s)

    answer = get(migrated_url, "/dashboard.json")

    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    snapshot = answer.json()
    queue = snapshot["queue"]
    assert {stage: queue[stage]["count"] for stage in ("pending", "taken", "processing")} == {
        "pending": 3,  # fresh, retrying, hostile
        "taken": 1,
        "processing": 1,
    }
    assert queue["pending"]["delayed"] == 1
    assert 399 < queue["pending"]["oldest_s"] < 3600
    assert queue["by_age"] == {
        "under_1m": 4,
        "from_1m_to_5m": 0,
        "from_5m_to_15m": 1,
        "over_15m": 0,
    }
    assert snapshot["failures"][:2] == [
        {"reason": OOM, "count": 2, "last_at": snapshot["failures"][0]["last_at"]},
        {"reason": BAD_STEPS, "count": 1, "last_at": snapshot["failures"][1]["last_at"]},
    ]
    hour = snapshot["last_hour"]
    assert (hour["completed"], hour["failed"], hour["cancelled"]) == (3, 3, 1)
    assert hour["per_minute"] == 0.05
    assert 19.5 < hour["p50_s"] < 21
    assert 28.5 < hour["p95_s"] < 31  # percentile_cont: 20 + 0.9 * 10

    jobs = by_id(snapshot)
    assert len(jobs) == 12
    assert [job["job_id"] for job in snapshot["jobs"]][-1] == seeded.jobs["delayed"]  # oldest
    running = jobs[seeded.jobs["processing"]]
    assert running["status"] == "processing"
    assert running["progress"]["stage"] == "sampling"
    assert (running["progress"]["step"], running["progress"]["steps"]) == (2, 4)
    assert running["prompt"] == "배경을 해변으로 바꿔줘"
    assert running["sent_prompt"] == "Change the background to a beach"
    assert running["translation"] == "llm"
    assert running["timings"] == {"claim": 3, "translate": 200}
    failed = jobs[seeded.jobs["failed"]]
    assert (failed["status"], failed["error"]) == ("failed", OOM)
    retrying = jobs[seeded.jobs["delayed"]]
    assert (retrying["status"], retrying["error"]) == ("pending", RETRY_ERROR)
    assert retrying["retries"] == 1
    done = jobs[seeded.jobs["done-20s"]]
    assert done["thumbnail_url"] == "http://img.test/done-20s.png"
    assert done["title"] == "보라빛 하늘"
    assert done["timings"] == FULL_TIMINGS
    assert list(done["timings"]) == list(STAGES)
    assert jobs[seeded.jobs["cancelled"]]["status"] == "cancelled"
    assert jobs[seeded.jobs["taken"]]["progress"] is None


def test_a_hostile_prompt_is_data_and_the_page_never_writes_html(migrated_url):
    seeded = seed_every_state(migrated_url)

    snapshot = get(migrated_url, "/dashboard.json").json()
    page = get(migrated_url, "/")

    assert by_id(snapshot)[seeded.jobs["hostile"]]["prompt"] == HOSTILE_PROMPT
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    # A policy that refuses inline scripts and handlers, should markup ever reach the DOM.
    policy = page.headers["content-security-policy"]
    assert policy == SECURITY_HEADERS["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    script = (STATIC_DIR / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


def test_the_page_and_its_files_are_served_from_the_package(migrated_url):
    for path, name, media in (
        ("/", "index.html", "text/html"),
        ("/dashboard/app.js", "app.js", "text/javascript"),
        ("/dashboard/style.css", "style.css", "text/css"),
    ):
        answer = get(migrated_url, path)
        assert answer.status_code == 200, path
        assert answer.headers["content-type"].startswith(media)
        assert answer.content == (STATIC_DIR / name).read_bytes()
    page = (STATIC_DIR / "index.html").read_text()
    assert "http://" not in page
    assert "https://" not in page  # no CDN: the page works offline


@pytest.mark.parametrize("path", ["/", "/dashboard.json", "/dashboard/app.js"])
def test_without_a_token_only_this_machine_may_look(migrated_url, path):
    assert get(migrated_url, path, client=LOOPBACK).status_code == 200
    assert get(migrated_url, path, client=("::1", 50000)).status_code == 200

    refused = get(migrated_url, path, client=REMOTE)

    assert refused.status_code == 403
    message = refused.json()["error"]
    assert "only on this machine (127.0.0.1 or ::1)" in message
    assert "DASHBOARD_TOKEN" in message


def test_with_a_token_everyone_needs_it_even_on_this_machine(migrated_url):
    assert get(migrated_url, "/dashboard.json", token=TOKEN).status_code == 401
    wrong = get(migrated_url, "/dashboard.json", token=TOKEN, headers=bearer("nope"))
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer <DASHBOARD_TOKEN>" in wrong.json()["error"]
    assert TOKEN not in wrong.text

    right = get(migrated_url, "/dashboard.json", client=REMOTE, token=TOKEN, headers=bearer(TOKEN))

    assert right.status_code == 200
    assert "queue" in right.json()


def test_the_token_in_the_address_once_becomes_a_strict_httponly_cookie(migrated_url):
    assert get(migrated_url, "/?token=wrong", client=REMOTE, token=TOKEN).status_code == 401

    swapped = get(migrated_url, f"/?token={TOKEN}", client=REMOTE, token=TOKEN)

    assert swapped.status_code == 303
    assert swapped.headers["location"] == "/"  # the token leaves the address bar
    header = swapped.headers["set-cookie"]
    assert "httponly" in header.lower()
    assert "samesite=strict" in header.lower()
    [morsel] = SimpleCookie(header).values()
    assert TOKEN not in morsel.value  # the cookie is derived from the token, not the token
    cookie = {"cookie": f"{morsel.key}={morsel.value}"}
    for path in ("/", "/dashboard.json", "/dashboard/style.css"):
        answer = get(migrated_url, path, client=REMOTE, token=TOKEN, headers=cookie)
        assert answer.status_code == 200, path
    forged = {"cookie": f"{morsel.key}={TOKEN}"}
    assert get(migrated_url, "/", client=REMOTE, token=TOKEN, headers=forged).status_code == 401


def test_a_blank_dashboard_token_is_refused_at_start():
    settings = Settings(database_url="unused", dashboard_token="  ")

    with pytest.raises(ConfigError, match="DASHBOARD_TOKEN is set but empty"):
        create_app(settings, Database("postgresql://unused"), RecordingWaker(), Metrics())


def test_a_database_error_is_one_sentence_not_a_traceback(pg_url):
    answer = get(pg_url, "/dashboard.json")  # no migrations: the tables are missing

    assert answer.status_code == 503
    assert answer.json() == {"error": "database unavailable; retry later"}


def test_a_job_through_the_flow_records_every_stage_duration(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    endpoint = endpoint_for(ScriptedWorker())
    korean = {"prompt": "배경을 해변으로 바꿔줘", "image_base64": png_b64()}
    job_id, _ = insert(migrated_url, korean)

    outcome = asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))

    assert outcome is Outcome.COMPLETED
    assert rows(migrated_url, job_id)[0]["job_status"] == "completed"
    shown = get(migrated_url, "/dashboard.json").json()["jobs"][0]
    assert shown["job_id"] == job_id
    recorded = shown["timings"]
    assert list(recorded) == list(STAGES)  # RunPod's delayTime and executionTime included
    assert all(isinstance(ms, int) and ms >= 0 for ms in recorded.values())
    assert recorded["translate"] > 0  # an OpenRouter round trip over HTTP


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_a_job_runpod_failed_keeps_the_durations_up_to_its_end(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    worker = ScriptedWorker(output={"error": "Processing failed: SamplerCustomAdvanced: boom"})
    endpoint = endpoint_for(worker)
    job_id, _ = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})

    outcome = asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))

    assert outcome is Outcome.FAILED
    shown = get(migrated_url, "/dashboard.json").json()["jobs"][0]
    assert (shown["job_id"], shown["status"]) == (job_id, "failed")
    assert shown["error"] == "Processing failed: SamplerCustomAdvanced: boom"
    assert list(shown["timings"]) == ["claim", "translate", "submit", "runpod_queue", "gpu"]
