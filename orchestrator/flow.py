"""One job's whole story, resumed at its stage: validate, translate, submit, await, store, title,
finalize. Every exception ends in a written-down outcome; every write is fenced on this process
holding the job."""

import logging
from contextlib import suppress

import psycopg

from handler.contract.errors import InvalidInput
from orchestrator.await_result import await_result
from orchestrator.claim import release_job
from orchestrator.deps import FlowDeps
from orchestrator.errors import (
    FencedOut,
    NeedsOperator,
    Permanent,
    RunPodJobGone,
    SubmissionUnknown,
    Transient,
    WorkCancelled,
)
from orchestrator.finalize import store, title_and_finalize, unpack
from orchestrator.jobs import ClaimedJob, JobStatus, Outcome, WorkStatus
from orchestrator.logs import bind_job
from orchestrator.outcomes import cancel, fail, finish, forget_submission, retry_later
from orchestrator.outputs import JobWake
from orchestrator.policy import (
    backoff_s,
    internal_error,
    is_worker_fault,
    unrecorded_submission_wait_s,
)
from orchestrator.runpod import RunPodJob
from orchestrator.submit import submit
from orchestrator.timings import StageClock, runpod_ms, save_timings

log = logging.getLogger(__name__)

LOST_TOO_OFTEN = "RunPod lost the job too many times"
UNRECORDED = (
    "a RunPod job may exist whose id was never recorded (its /run answer was lost); "
    "waiting for its completion webhook before submitting again"
)
ABANDONED = "Processing failed: the job was left unfinished {} times (its process kept stopping)"


async def run_job(job: ClaimedJob, deps: FlowDeps, wake: JobWake) -> Outcome:
    """Carry a claimed job to a terminal state, or back to pending to be retried later.

    Raises only when even writing the outcome failed (the database is gone): the caller then
    lets the job's lease run out, and whoever claims it next resumes it.
    """
    bind_job(job.id, job.work_id)
    try:
        outcome = await _settle(job, deps, wake, StageClock())
    except FencedOut:
        outcome = await _fenced_out(job, deps)
    deps.metrics.jobs.labels(outcome.value).inc()
    return outcome


async def _fenced_out(job: ClaimedJob, deps: FlowDeps) -> Outcome:
    """A write found the job no longer `taken` by this process. The user may have cancelled its
    row (the web app's other way to cancel): still ours, so this process cancels it, RunPod job
    included. Otherwise another process took it over, or a webhook adopted a submission: hand
    it over."""
    cancelled = await deps.db.one(
        "cancelled_jobs", job_ids=[job.id], worker_id=deps.settings.worker_id
    )
    if cancelled is not None:
        with suppress(FencedOut):
            return await cancel(job, deps)
    log.warning("job %s: no longer ours to move (taken over or adopted); stopping", job.id)
    await release_job(deps.db, job_id=job.id, worker_id=deps.settings.worker_id)
    return Outcome.HANDED_OVER


async def _settle(job: ClaimedJob, deps: FlowDeps, wake: JobWake, clock: StageClock) -> Outcome:
    """The story, with what escapes it turned into an outcome."""
    try:
        return await _story(job, deps, wake, clock)
    except FencedOut:
        raise
    except NeedsOperator as exc:
        deps.alerts.report(exc.service, str(exc))
        return await retry_later(job, deps, str(exc), deps.settings.operator_retry_s, spend=0)
    except SubmissionUnknown as exc:
        return await _retry_or_fail(job, deps, str(exc), _backoff_s(job, deps), unknown=True)
    except Transient as exc:
        return await _retry_or_fail(job, deps, str(exc), _backoff_s(job, deps, exc.retry_after_s))
    except (Permanent, InvalidInput) as exc:
        return await fail(job, deps, str(exc))
    except WorkCancelled:
        return await cancel(job, deps)
    except psycopg.OperationalError as exc:
        message = f"the database connection failed ({type(exc).__name__})"
        return await _retry_or_fail(job, deps, message, _backoff_s(job, deps))
    except Exception as exc:  # a bug, or a failure nobody classified: retried, within the budget
        log.exception("job %s: unexpected %s", job.id, type(exc).__name__)
        return await _retry_or_fail(job, deps, internal_error(exc), _backoff_s(job, deps))


async def _retry_or_fail(
    job: ClaimedJob, deps: FlowDeps, error: str, delay_s: float, *, unknown: bool = False
) -> Outcome:
    if job.retries >= deps.settings.max_retries:
        log.error("job %s: retry budget spent (%d retries)", job.id, job.retries)
        return await fail(job, deps, f"Processing failed: {error}")
    return await retry_later(job, deps, error, delay_s, submission_unknown=unknown)


def _backoff_s(job: ClaimedJob, deps: FlowDeps, retry_after_s: float | None = None) -> float:
    settings = deps.settings
    return backoff_s(
        job.retries + 1,
        base_s=settings.retry_base_s,
        cap_s=settings.retry_cap_s,
        retry_after_s=retry_after_s,
    )


async def _story(job: ClaimedJob, deps: FlowDeps, wake: JobWake, clock: StageClock) -> Outcome:
    if job.abandoned > deps.settings.max_abandoned:
        return await fail(job, deps, ABANDONED.format(job.abandoned))
    match job.work_status:
        case WorkStatus.CANCELLED:
            return await cancel(job, deps)
        case WorkStatus.COMPLETED | WorkStatus.FAILED:
            return await finish(job, deps, JobStatus(job.work_status.value))
    if (wait_s := unrecorded_submission_wait_s(job, deps.settings)) > 0:
        return await retry_later(job, deps, UNRECORDED, wait_s, spend=0, submission_unknown=True)
    if job.runpod_job_id is None and job.submit_started_at is not None:
        # Nothing can find a RunPod job whose id was lost (no webhook, or it never came): say
        # so, since submitting again may pay for the same image twice.
        log.warning("job %s: an earlier /run may have reached RunPod unrecorded", job.id)
        deps.metrics.orphans.labels("possibly_duplicated").inc()
    runpod_id, submitted_at = job.runpod_job_id, job.submitted_at
    attempts, reason = job.attempts, LOST_TOO_OFTEN
    stage = deps.metrics.stage_seconds
    while True:
        if runpod_id is None or submitted_at is None:
            if attempts >= deps.settings.max_attempts:
                return await fail(job, deps, reason)
            with stage.labels("submit").time():
                runpod_id, submitted_at = await submit(job, deps, clock)
            attempts += 1
            await save_timings(deps, job.id, clock)
        try:
            with stage.labels("await").time():
                result = await await_result(job, runpod_id, submitted_at, deps, wake)
        except RunPodJobGone as exc:
            reason = str(exc)
        else:
            clock.add(runpod_ms(result.delay_time, result.execution_time))
            if result.status == "COMPLETED":
                with clock.stage("store"):
                    async with deps.outputs.held(result):  # the output slot, until unpacked
                        unpacked = await unpack(result.output, deps)
                        del result  # its base64 is not kept while the image waits or uploads,
                        room = await deps.uploads.reserve(len(unpacked.png))  # in the slot
                    with room:
                        stored = await store(job, unpacked, deps)
                    del unpacked  # nor the image while the title comes
                return await title_and_finalize(job, stored, deps, clock)
            if not is_worker_fault(result.status, result.error):
                await save_timings(deps, job.id, clock)
                return await conclude(job, result, deps)
            reason = result.error or "the RunPod worker failed"
        log.warning("job %s: %s; submitting again", job.id, reason)
        await forget_submission(job, deps, reason)
        runpod_id = submitted_at = None


async def conclude(job: ClaimedJob, result: RunPodJob, deps: FlowDeps) -> Outcome:
    """Turn RunPod's terminal status, other than COMPLETED (stored above), into ours."""
    match result.status:
        case "CANCELLED":
            return await cancel(job, deps)
        case "TIMED_OUT":
            return await fail(job, deps, "Timed out on RunPod (execution timeout reached)")
        case _:
            return await fail(job, deps, result.error or "RunPod reported the job FAILED")
