"""How a job's run ends, written down: completed elsewhere, failed, cancelled, or back to pending.

Every write is fenced on this process holding the job (`locked_by`); zero rows is FencedOut.
"""

import logging
from typing import Any

from orchestrator.deps import FlowDeps
from orchestrator.errors import FencedOut
from orchestrator.jobs import ClaimedJob, JobStatus, Outcome

log = logging.getLogger(__name__)

FINAL_OUTCOMES = {
    JobStatus.COMPLETED: Outcome.COMPLETED,
    JobStatus.FAILED: Outcome.FAILED,
    JobStatus.CANCELLED: Outcome.CANCELLED,
}


async def ended(job: ClaimedJob, deps: FlowDeps, name: str, /, **params: Any) -> None:
    """Run `name`, a statement that ends the job (and maybe its work), fenced on this worker's
    hold of it; FencedOut when it is no longer ours."""
    if await deps.held(name, job.id, **params) is None:
        raise FencedOut(job.id)


async def finish(job: ClaimedJob, deps: FlowDeps, status: JobStatus) -> Outcome:
    """End the job row alone (its work is already final)."""
    await ended(job, deps, "finish_job", status=status.value, error=None)
    return FINAL_OUTCOMES[status]


async def fail(job: ClaimedJob, deps: FlowDeps, message: str) -> Outcome:
    """Failed work (with the message) and failed job, together, in one statement."""
    log.warning("job %s: failed: %s", job.id, message)
    await ended(job, deps, "fail_job", work_id=job.work_id, error=message)
    return Outcome.FAILED


async def cancel(job: ClaimedJob, deps: FlowDeps) -> Outcome:
    """The user's cancellation: the RunPod job now recorded is cancelled too, then both rows."""
    row = await deps.db.one("job_submission", job_id=job.id)
    runpod_id = (row or {}).get("runpod_job_id") or job.runpod_job_id
    if runpod_id:
        await cancel_on_runpod(deps, runpod_id)
    await ended(job, deps, "cancel_job", work_id=job.work_id)
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
