"""The Orchestrator itself on PostgreSQL: leases follow live tasks, the claim/heartbeat race,
loops that outlive exceptions, the submission window (shielded /run, lost answers, orphans
adopted or cancelled), operator problems that wait, sick workers, and bounded retries."""

import asyncio
import threading
from dataclasses import replace

import httpx
import psycopg
import pytest

from orchestrator.jobs import Outcome
from orchestrator.runpod import RunPodClient
from tests.integration.faultkit import (
    Fault,
    FaultyDatabase,
    FaultyProxy,
    LosesRunAnswers,
    job_state,
    running,
    set_token,
    until_finished,
    webhook,
)
from tests.integration.flowkit import ScriptedWorker, drive, execute, insert, png_b64

PROMPT = {"prompt": "make it red", "image_base64": png_b64()}


def test_a_job_claimed_while_leases_are_renewed_is_not_lost(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    """The renewal's answer arrives after a new claim: that job was not asked about, so it is
    not cancelled as 'lease lost'."""
    release = threading.Event()
    worker = ScriptedWorker(block=release)
    endpoint = endpoint_for(worker)
    db = FaultyDatabase(migrated_url)
    db.after["renew_leases"] = 0.6  # the renewal's result comes back late

    async def scenario():
        async with running(
            migrated_url, endpoint, openrouter_server, tmp_path, db=db, heartbeat_interval_s=0.2
        ) as orchestrator:
            first, _ = insert(migrated_url, PROMPT)
            orchestrator.nudge()
            await asyncio.sleep(0.5)  # first is being driven; a renewal is under way
            second, _ = insert(migrated_url, PROMPT)
            orchestrator.nudge()
            await asyncio.sleep(1.5)  # several renewals answer after second was claimed
            release.set()
            return [await until_finished(migrated_url, j, 10) for j in (first, second)]

    (first, _), (second, _) = asyncio.run(scenario())
    assert (first["status"], second["status"]) == ("completed", "completed")
    assert second["retries"] == 0
    assert len(worker.inputs) == 2  # nobody resubmitted after a false 'lease lost'


def test_a_lease_is_renewed_only_while_a_task_drives_the_job(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    """A row locked by this process with no live task (its task died) is not kept alive."""
    endpoint = endpoint_for(ScriptedWorker())
    orphan, _ = insert(migrated_url, PROMPT)

    async def scenario():
        async with running(migrated_url, endpoint, openrouter_server, tmp_path) as orchestrator:
            execute(
                migrated_url,
                "UPDATE generation_jobs SET status = 'taken', locked_by = %s, "
                "lease_expires_at = now() + interval '1 s' WHERE id = %s",
                (orchestrator.settings.worker_id, orphan),
            )
            # Its lease runs out (no renewal), so it is claimed again and finished.
            return await until_finished(migrated_url, orphan, 6)

    row, _ = asyncio.run(scenario())
    assert row["status"] == "completed"
    assert row["abandoned"] == 1


def test_every_loop_outlives_an_exception_nobody_planned_for(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    release = threading.Event()
    endpoint = endpoint_for(ScriptedWorker(block=release))
    db = FaultyDatabase(migrated_url)
    db.before["settle_unclaimed_cancellations"] = Fault(lambda: RuntimeError("injected"), times=2)
    for name in ("claim_jobs", "renew_leases"):
        db.before[name] = Fault(lambda: RuntimeError("injected"), times=1)

    async def scenario():
        async with running(
            migrated_url, endpoint, openrouter_server, tmp_path, db=db, sweep_interval_s=0.1
        ) as orchestrator:
            job_id, _ = insert(migrated_url, PROMPT)
            orchestrator.nudge()
            await asyncio.sleep(3.0)  # the job is in flight: the heartbeat's fault fires
            release.set()
            row, _ = await until_finished(migrated_url, job_id, 15)
            failures = orchestrator.deps.metrics.loop_failures
            counts = {
                loop: failures.labels(loop)._value.get()
                for loop in ("claim_loop", "heartbeat_loop", "sweep_loop")
            }
            # The sweep still settles a cancellation of a job nobody holds.
            cancelled, work_id = insert(migrated_url, PROMPT)
            execute(migrated_url, "UPDATE works SET status = 'cancelled' WHERE id = %s", (work_id,))
            settled, _ = await until_finished(migrated_url, cancelled, 5)
            return row, counts, settled

    try:
        row, counts, settled = asyncio.run(scenario())
    finally:
        release.set()
    assert row["status"] == "completed"
    assert counts["claim_loop"] == 1
    assert counts["sweep_loop"] == 2
    assert counts["heartbeat_loop"] == 1
    assert settled["status"] == "cancelled"


def test_a_cancel_during_run_still_records_the_runpod_job_and_cancels_it(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    """The user cancels while /run's answer is on its way: the RunPod job is cancelled on
    RunPod, not left running unknown."""
    release = threading.Event()
    worker = ScriptedWorker(block=release)
    endpoint = endpoint_for(worker)

    class SlowAnswers:
        def __init__(self, runpod):
            self._runpod = runpod

        async def run(self, *args, **kwargs):
            runpod_id = await self._runpod.run(*args, **kwargs)
            await asyncio.sleep(1.0)  # the answer travels; the cancel lands meanwhile
            return runpod_id

        def __getattr__(self, name):
            return getattr(self._runpod, name)

    def wrap(deps):
        return replace(deps, runpod=SlowAnswers(deps.runpod))

    async def scenario():
        async with running(
            migrated_url, endpoint, openrouter_server, tmp_path, wrap=wrap
        ) as orchestrator:
            job_id, work_id = insert(migrated_url, PROMPT)
            orchestrator.nudge()
            await asyncio.sleep(0.5)
            execute(migrated_url, "UPDATE works SET status = 'cancelled' WHERE id = %s", (work_id,))
            row, _ = await until_finished(migrated_url, job_id, 10)
            return row

    try:
        row = asyncio.run(scenario())
    finally:
        release.set()
    assert (row["status"], row["work_status"]) == ("cancelled", "cancelled")
    # Recording the submission wrote nothing for a cancelled work: no half of it on the job.
    assert (row["runpod_job_id"], row["attempts"]) == (None, 0)
    [runpod_id] = worker.job_ids
    status = httpx.get(f"{endpoint.url}/status/{runpod_id}").json()["status"]
    assert status == "CANCELLED"


def test_a_lost_answer_to_the_submission_record_keeps_the_recorded_runpod_job(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    """The record of the RunPod id committed but its answer was lost (the connection dropped):
    the run it recorded is not cancelled; the job resumes awaiting it, one GPU run in all."""
    release = threading.Event()
    worker = ScriptedWorker(block=release)  # still running when the answer is lost
    endpoint = endpoint_for(worker)
    db = FaultyDatabase(migrated_url)
    db.lost["record_submission"] = Fault(
        lambda: psycopg.OperationalError("injected: the connection dropped"), times=1
    )

    async def scenario():
        async with running(
            migrated_url, endpoint, openrouter_server, tmp_path, db=db
        ) as orchestrator:
            job_id, _ = insert(migrated_url, PROMPT)
            orchestrator.nudge()
            await asyncio.sleep(1.0)
            release.set()
            return await until_finished(migrated_url, job_id, 15)

    try:
        row, _ = asyncio.run(scenario())
    finally:
        release.set()
    assert db.lost["record_submission"].visits >= 1
    assert (row["status"], row["work_status"]) == ("completed", "completed")
    assert len(worker.job_ids) == 1
    assert httpx.get(f"{endpoint.url}/status/{worker.job_ids[0]}").json()["status"] == "COMPLETED"


def test_a_lost_run_answer_waits_for_the_webhook_which_adopts_the_runpod_job(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    """/run reached RunPod but its answer was lost: no second /run while the completion webhook
    may still come; when it comes (with the job's token), its RunPod job is the result."""
    worker = ScriptedWorker()
    endpoint = endpoint_for(worker)

    async def scenario():
        client = httpx.AsyncClient(transport=LosesRunAnswers(times=1), timeout=10)
        runpod = RunPodClient(client, endpoint.api_base, "local", None)
        async with (
            client,
            running(
                migrated_url,
                endpoint,
                openrouter_server,
                tmp_path,
                wrap=lambda deps: replace(deps, runpod=runpod),
                public_base_url="http://127.0.0.1:9",  # webhooks on; they are delivered by hand
                submission_unknown_wait_s=30,
            ) as orchestrator,
        ):
            job_id, _ = insert(migrated_url, PROMPT)
            orchestrator.nudge()
            for _ in range(100):
                await asyncio.sleep(0.05)
                waiting = job_state(migrated_url, job_id)
                if waiting["status"] == "pending" and waiting["retries"] == 1:
                    break
            [runpod_id] = worker.job_ids
            assert await webhook(orchestrator, waiting["token"], runpod_id)
            row, _ = await until_finished(migrated_url, job_id, 10)
            return waiting, row

    waiting, row = asyncio.run(scenario())
    assert waiting["runpod_job_id"] is None
    assert "may have the job" in waiting["last_error"]
    assert (row["status"], row["work_status"], row["attempts"]) == ("completed", "completed", 1)
    assert row["runpod_job_id"] == worker.job_ids[0]
    assert len(worker.job_ids) == 1  # one GPU run


def test_a_webhook_for_a_runpod_job_that_is_not_the_recorded_one_cancels_it(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    release = threading.Event()
    worker = ScriptedWorker(block=release)
    endpoint = endpoint_for(worker)
    stray = httpx.post(f"{endpoint.url}/run", json={"input": {"prompt": "p"}}).json()["id"]
    job_id, _ = insert(migrated_url, PROMPT)
    token = set_token(migrated_url, job_id)
    execute(
        migrated_url,
        "UPDATE generation_jobs SET status = 'completed', runpod_job_id = 'rp-recorded' "
        "WHERE id = %s",
        (job_id,),
    )

    async def scenario():
        async with running(migrated_url, endpoint, openrouter_server, tmp_path) as orchestrator:
            known = await webhook(orchestrator, token, stray)
            unknown = await webhook(orchestrator, "no-such-token", stray)
            for _ in range(100):
                status = httpx.get(f"{endpoint.url}/status/{stray}").json()["status"]
                if status == "CANCELLED":
                    break
                await asyncio.sleep(0.05)
            return known, unknown, status

    try:
        known, unknown, status = asyncio.run(scenario())
    finally:
        release.set()
    assert (known, unknown, status) == (True, False, "CANCELLED")


def test_a_work_inserted_with_two_jobs_runs_on_the_gpu_once(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    """The web app inserted two pending jobs for one work: the older runs, the other waits
    for it and then ends without a GPU run of its own (both used to run, one wasted)."""
    worker = ScriptedWorker()
    endpoint = endpoint_for(worker)
    first, work_id = insert(migrated_url, PROMPT)
    second = "0b6d9b2e-5a5e-4c2b-9d7e-3f1a2b3c4d5e"
    execute(
        migrated_url,
        "INSERT INTO generation_jobs (id, work_id, created_at) "
        "VALUES (%s, %s, now() + interval '1 ms')",
        (second, work_id),
    )

    async def scenario():
        async with running(migrated_url, endpoint, openrouter_server, tmp_path) as orchestrator:
            orchestrator.nudge()
            return [await until_finished(migrated_url, j, 10) for j in (first, second)]

    (first_row, _), (second_row, _) = asyncio.run(scenario())
    assert (first_row["status"], first_row["work_status"]) == ("completed", "completed")
    assert second_row["runpod_job_id"] is None
    assert len(worker.inputs) == 1  # one GPU run


def test_a_webhook_naming_another_jobs_runpod_job_neither_cancels_nor_adopts_it(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    """A token is one job's; the RunPod job its body names may be another user's (a leaked
    token, a confused sender). That run goes on, and a job waiting to adopt a lost submission
    does not take it as its own: it would be the other user's image."""
    release = threading.Event()
    worker = ScriptedWorker(block=release)
    endpoint = endpoint_for(worker)
    theirs = httpx.post(f"{endpoint.url}/run", json={"input": {"prompt": "p"}}).json()["id"]
    owner, _ = insert(migrated_url, PROMPT)  # the job that recorded it, running
    execute(
        migrated_url,
        "UPDATE generation_jobs SET status = 'taken', runpod_job_id = %s, locked_by = 'other', "
        "lease_expires_at = now() + interval '1 hour', submitted_at = now() WHERE id = %s",
        (theirs, owner),
    )
    finished, _ = insert(migrated_url, PROMPT)  # a job long done, whose token leaked
    finished_token = set_token(migrated_url, finished)
    execute(
        migrated_url,
        "UPDATE generation_jobs SET status = 'completed', runpod_job_id = 'rp-recorded' "
        "WHERE id = %s",
        (finished,),
    )
    lost, _ = insert(migrated_url, PROMPT)  # a job whose own /run answer was lost
    lost_token = set_token(migrated_url, lost)
    execute(
        migrated_url,
        "UPDATE generation_jobs SET submit_started_at = now(), "
        "not_before = now() + interval '1 hour' WHERE id = %s",
        (lost,),
    )

    async def scenario():
        async with running(migrated_url, endpoint, openrouter_server, tmp_path) as orchestrator:
            ignored = orchestrator.deps.metrics.orphans.labels("ignored")
            for token in (finished_token, lost_token):
                assert await webhook(orchestrator, token, theirs)
            for _ in range(100):
                if ignored._value.get() == 2:
                    break
                await asyncio.sleep(0.05)
            return ignored._value.get()

    try:
        ignored = asyncio.run(scenario())
        status = httpx.get(f"{endpoint.url}/status/{theirs}").json()["status"]
    finally:
        release.set()
    assert ignored == 2
    assert status in ("IN_QUEUE", "IN_PROGRESS")  # not cancelled
    lost_row = job_state(migrated_url, lost)
    assert (lost_row["status"], lost_row["runpod_job_id"]) == ("pending", None)
    assert job_state(migrated_url, owner)["runpod_job_id"] == theirs


@pytest.mark.parametrize(
    ("code", "says"),
    [(402, "out of credit"), (404, "RUNPOD_ENDPOINT_ID"), (401, "RUNPOD_API_KEY")],
)
def test_operator_problems_on_run_make_jobs_wait_and_readyz_say_why(
    code, says, migrated_url, endpoint_for, openrouter_server, tmp_path
):
    worker = ScriptedWorker()
    endpoint = endpoint_for(worker)
    endpoint.endpoint.inject(code, times=3, route="run")

    async def scenario():
        async with running(
            migrated_url, endpoint, openrouter_server, tmp_path, operator_retry_s=0.3
        ) as orchestrator:
            jobs = [insert(migrated_url, PROMPT)[0] for _ in range(3)]
            orchestrator.nudge()
            for _ in range(100):
                if problems := orchestrator.operator_problems:
                    break
                await asyncio.sleep(0.02)
            rows = [await until_finished(migrated_url, j, 10) for j in jobs]
            return problems, rows, orchestrator.operator_problems

    during, rows, after = asyncio.run(scenario())
    assert says in during["runpod"]
    assert [row["status"] for row, _ in rows] == ["completed"] * 3
    assert all(row["retries"] == 0 for row, _ in rows)  # waiting spent no retries
    assert after == {}  # the first success closed the problem


def test_a_sick_worker_gets_the_job_resubmitted_within_max_attempts(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    class SickOnce(ScriptedWorker):
        def run(self, job_id, job_input):
            if not self.job_ids:
                self.job_ids.append(job_id)
                return {"error": "ComfyUI is not reachable at http://x", "refresh_worker": True}
            return super().run(job_id, job_input)

    worker = SickOnce()
    endpoint = endpoint_for(worker)
    job_id, _ = insert(migrated_url, PROMPT)
    outcome = asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
    row = job_state(migrated_url, job_id)
    assert outcome is Outcome.COMPLETED
    assert (row["status"], row["attempts"]) == ("completed", 2)
    assert len(worker.job_ids) == 2


def test_attempts_are_bounded_across_processes(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    """A job that already used MAX_ATTEMPTS submissions (in earlier processes) is not sent again."""

    class AlwaysSick(ScriptedWorker):
        def run(self, job_id, job_input):
            self.job_ids.append(job_id)
            return {"error": "ComfyUI is not reachable at http://x", "refresh_worker": True}

    worker = AlwaysSick()
    endpoint = endpoint_for(worker)
    job_id, _ = insert(migrated_url, PROMPT)
    execute(migrated_url, "UPDATE generation_jobs SET attempts = 2 WHERE id = %s", (job_id,))
    outcome = asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
    row = job_state(migrated_url, job_id)
    assert outcome is Outcome.FAILED
    assert row["attempts"] == 3
    assert row["error_message"].startswith("ComfyUI is not reachable")
    assert len(worker.job_ids) == 1


def test_an_unexpected_error_is_retried_within_the_budget_then_fails_with_its_type(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    endpoint = endpoint_for(ScriptedWorker())
    job_id, _ = insert(migrated_url, PROMPT)
    always = Fault(lambda: NotADirectoryError(20, "Not a directory"), times=99)

    def wrap(deps):
        return replace(deps, storage=FaultyProxy(deps.storage, {"put_png": always}))

    async def scenario():
        async with running(
            migrated_url, endpoint, openrouter_server, tmp_path, wrap=wrap, max_retries=2
        ) as orchestrator:
            orchestrator.nudge()
            return await until_finished(migrated_url, job_id, 15)

    row, _ = asyncio.run(scenario())
    assert (row["status"], row["work_status"]) == ("failed", "failed")
    assert row["error_message"] == "Processing failed: internal error (NotADirectoryError)"
    assert row["retries"] == 2
    assert always.visits == 3


def test_a_job_abandoned_too_often_fails_instead_of_taking_processes_down(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    worker = ScriptedWorker()
    endpoint = endpoint_for(worker)
    job_id, _ = insert(migrated_url, PROMPT)
    execute(
        migrated_url,
        "UPDATE generation_jobs SET status = 'taken', locked_by = 'dead', abandoned = 10, "
        "lease_expires_at = now() - interval '1 s' WHERE id = %s",
        (job_id,),
    )
    outcome = asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
    row = job_state(migrated_url, job_id)
    assert outcome is Outcome.FAILED
    assert "left unfinished 11 times" in row["error_message"]
    assert worker.inputs == []
