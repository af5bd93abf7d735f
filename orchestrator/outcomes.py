"""How a job's run ends, written down: completed elsewhere, failed, cancelled, or back to pending.

Every write is fenced on this process holding the job (`locked_by`); zero rows is FencedOut.
"""

import logging
from typing import Any

from psycopg import AsyncConnection

from orchestrator.db import fetch_one
from orchestrator.deps import FlowDeps
from orchestrator.errors import FencedOut
from orchestrator.jobs import ClaimedJob, JobStatus, Outcome

log = logging.getLogger(__name__)

FINAL_OUTCOMES = {
    JobStatus.COMPLETED: Outcome.COMPLETED,
    JobStatus.FAILED: Outcome.FAILED,
    JobStatus.CANCELLED: Outcome.CANCELLED,
}


async def finish_in(
    conn: AsyncConnection[Any],
    job: ClaimedJob,
    deps: FlowDeps,
    status: JobStatus,
    error: str | None,
) -> None:
    """The job row's terminal status, inside the caller's transaction."""
    row = await fetch_one(
        conn,
        "finish_job",
        job_id=job.id,
        worker_id=deps.settings.worker_id,
        status=status.value,
        error=error,
    )
    if row is None:
        raise FencedOut(job.id)


async def finish(job: ClaimedJob, deps: FlowDeps, status: JobStatus) -> Outcome:
    """End the job row alone (its work is already final)."""
    async with deps.db.transaction() as conn:
        await finish_in(conn, job, deps, status, None)
    return FINAL_OUTCOMES[status]


async def fail(job: ClaimedJob, deps: FlowDeps, message: str) -> Outcome:
    """Failed work (with the message) and failed job, together."""
    log.warning("job %s: failed: %s", job.id, message)
    async with deps.db.transaction() as conn:
        await fetch_one(conn, "fail_work", work_id=job.work_id, error=message)
        await finish_in(conn, job, deps, JobStatus.FAILED, message)
    return Outcome.FAILED


async def cancel(job: ClaimedJob, deps: FlowDeps) -> Outcome:
    """The user's cancellation: the RunPod job now recorded is cancelled too, then both rows."""
    row = await deps.db.one("job_submission", job_id=job.id)
    runpod_id = (row or {}).get("runpod_job_id") or job.runpod_job_id
    if runpod_id:
        await cancel_on_runpod(deps, runpod_id)
    async with deps.db.transaction() as conn:
        await fetch_one(conn, "cancel_work", work_id=job.work_id)
        await finish_in(conn, job, deps, JobStatus.CANCELLED, None)
    log.info("job %s: cancelled", job.id)
    return Outcome.CANCELLED


async def cancel_on_runpod(deps: FlowDeps, runpod_id: str) -> bool:
    """Ask RunPod to stop a job; a failure is logged, not raised (the caller moves on)."""
    try:
        await deps.runpod.cancel(runpod_id)
    except Exception as exc:  # best effort on every path, error paths included
        log.warning("RunPod cancel of %s failed (%s)", runpod_id, type(exc).__name__)
        return False
    return True


async def retry_later(
    job: ClaimedJob,
    deps: FlowDeps,
    error: str,
    delay_s: float,
    *,
    spend: int = 1,
    submission_unknown: bool = False,
) -> Outcome:
    """Back to pending, due after a delay; a submitted job keeps its RunPod id, and one whose
    `/run` answer was lost keeps the mark that a RunPod job may exist."""
    log.warning("job %s: will retry in %.0f s: %s", job.id, delay_s, error)
    row = await deps.held(
        "retry_later",
        job.id,
        delay_s=delay_s,
        error=error,
        spend=spend,
        submission_unknown=submission_unknown,
    )
    if row is None:
        raise FencedOut(job.id)
    return Outcome.RETRY_LATER


async def forget_submission(job: ClaimedJob, deps: FlowDeps, error: str) -> None:
    """Clear a RunPod id that must be submitted again (RunPod forgot it, or its worker broke)."""
    row = await deps.held("forget_submission", job.id, error=error)
    if row is None:
        raise FencedOut(job.id)
