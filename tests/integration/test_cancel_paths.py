"""Every way a user cancels ends both rows and the RunPod run: the job row set `cancelled` (the
web app's other way, DESIGN.md) while a live process holds it, or while nobody alive does; a
work cancelled while its pending job keeps a RunPod run; and a retried work stays retried."""

import asyncio
import threading

import httpx
import psycopg
import pytest

from orchestrator.console_ops import retry
from orchestrator.jobs import Outcome
from tests.integration.faultkit import job_state, running, until_finished
from tests.integration.flowkit import ScriptedWorker, drive, execute, insert, png_b64, rows

PROMPT = {"prompt": "make it red", "image_base64": png_b64()}


def runpod_status(endpoint, runpod_id: str) -> str:
    return httpx.get(f"{endpoint.url}/status/{runpod_id}").json()["status"]


async def until(check, timeout_s: float, what: str):
    """Poll `check()` (run in a thread) until it returns something truthy."""
    for _ in range(int(timeout_s / 0.05)):
        if value := await asyncio.to_thread(check):
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"not {what} after {timeout_s} s")


def test_a_job_row_cancelled_while_runpod_runs_cancels_the_run_and_the_work(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    release = threading.Event()
    worker = ScriptedWorker(block=release)
    endpoint = endpoint_for(worker)

    async def scenario():
        async with running(migrated_url, endpoint, openrouter_server, tmp_path) as orchestrator:
            job_id, _ = insert(migrated_url, PROMPT)
            orchestrator.nudge()
            submitted = await until(
                lambda: job_state(migrated_url, job_id)["runpod_job_id"], 10, "submitted"
            )
            execute(
                migrated_url,
                "UPDATE generation_jobs SET status = 'cancelled' WHERE id = %s",
                (job_id,),
            )
            await until(
                lambda: job_state(migrated_url, job_id)["work_status"] == "cancelled",
                10,
                "cancelled",
            )
            return submitted, job_id, dict(orchestrator.in_flight)

    try:
        runpod_id, job_id, in_flight = asyncio.run(scenario())
        status = runpod_status(endpoint, runpod_id)
    finally:
        release.set()
    job, _ = rows(migrated_url, job_id)
    assert status == "CANCELLED"
    assert (job["job_status"], job["status"]) == ("cancelled", "cancelled")
    assert job["cancelled_at"] is not None
    assert job["finished_at"] is not None
    assert in_flight == {}  # its task ended after cancelling, not as a lost lease


@pytest.mark.parametrize("which", ["job row, holder dead", "work, job pending with a run"])
def test_a_cancellation_nobody_alive_holds_is_settled_and_its_run_cancelled(
    which, migrated_url, endpoint_for, openrouter_server, tmp_path
):
    """The job's last holder died after submitting (or the job went back to pending keeping its
    RunPod run, to resume it); the user cancels: the sweep ends both rows and the run."""
    release = threading.Event()
    endpoint = endpoint_for(ScriptedWorker(block=release))
    runpod_id = httpx.post(f"{endpoint.url}/run", json={"input": PROMPT}).json()["id"]
    job_id, work_id = insert(migrated_url, PROMPT)
    execute(
        migrated_url,
        "UPDATE works SET status = 'processing', runpod_job_id = %s WHERE id = %s",
        (runpod_id, work_id),
    )
    if which.startswith("job row"):
        execute(
            migrated_url,
            "UPDATE generation_jobs SET status = 'cancelled', locked_by = 'dead', "
            "lease_expires_at = now() - interval '1 s', runpod_job_id = %s, submitted_at = now() "
            "WHERE id = %s",
            (runpod_id, job_id),
        )
    else:
        execute(
            migrated_url,
            "UPDATE generation_jobs SET runpod_job_id = %s, submitted_at = now(), "
            "not_before = now() + interval '1 hour' WHERE id = %s",
            (runpod_id, job_id),
        )
        execute(migrated_url, "UPDATE works SET status = 'cancelled' WHERE id = %s", (work_id,))

    async def scenario():
        async with running(migrated_url, endpoint, openrouter_server, tmp_path):
            return await until(
                lambda: runpod_status(endpoint, runpod_id) == "CANCELLED", 10, "cancelled on RunPod"
            )

    try:
        asyncio.run(scenario())
    finally:
        release.set()
    job, _ = rows(migrated_url, job_id)
    assert (job["job_status"], job["status"]) == ("cancelled", "cancelled")
    assert job["cancelled_at"] is not None
    assert job["finished_at"] is not None


def test_a_retried_work_is_not_cancelled_again_by_its_old_job(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    """`klein retry` of a cancelled work: its new job runs; the old cancelled job (nobody holds
    it) does not drag the work back to cancelled."""
    endpoint = endpoint_for(ScriptedWorker())
    old_job, work_id = insert(migrated_url, PROMPT)
    execute(
        migrated_url,
        "UPDATE generation_jobs SET status = 'cancelled', finished_at = now() WHERE id = %s",
        (old_job,),
    )
    execute(migrated_url, "UPDATE works SET status = 'cancelled' WHERE id = %s", (work_id,))
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        retry(conn, work_id)  # what `klein retry` does
        [(new_job,)] = conn.execute(
            "SELECT id::text FROM generation_jobs WHERE work_id = %s AND id <> %s",
            (work_id, old_job),
        ).fetchall()

    async def scenario():
        # The sweep runs many times before the claim (the first claim comes after 0.5 s).
        execute(
            migrated_url,
            "UPDATE generation_jobs SET not_before = now() + interval '0.5 s' WHERE id = %s",
            (new_job,),
        )
        async with running(
            migrated_url, endpoint, openrouter_server, tmp_path, sweep_interval_s=0.05
        ):
            return await until_finished(migrated_url, new_job, 10)

    row, _ = asyncio.run(scenario())
    assert (row["status"], row["work_status"]) == ("completed", "completed")


def test_a_job_row_cancelled_while_the_image_is_made_is_cancelled_not_completed(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    """The user's cancellation of the job row wins over a result that arrives after it, as a
    cancelled work's does: no completed work, no files row."""

    class CancelsTheJobRow(ScriptedWorker):
        def run(self, runpod_id, job_input):
            execute(
                migrated_url,
                "UPDATE generation_jobs SET status = 'cancelled' WHERE id = %s",
                (job_id,),
            )
            return super().run(runpod_id, job_input)

    endpoint = endpoint_for(CancelsTheJobRow())
    job_id, _ = insert(migrated_url, PROMPT)
    outcome = asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
    job, file = rows(migrated_url, job_id)
    assert outcome is Outcome.CANCELLED
    assert (job["job_status"], job["status"]) == ("cancelled", "cancelled")
    assert job["cancelled_at"] is not None
    assert job["finished_at"] is not None
    assert file is None
