"""Validate, translate, and submit to RunPod, so that no RunPod job goes unrecorded.

The window between `/run` and recording its id is where a GPU run can be orphaned, so:
the job's webhook token and metadata are written first; `/run` and the record run to the end
even when the job's task is cancelled meanwhile; an id that cannot be recorded is cancelled on
RunPod at once (one whose record's answer was lost only once the row shows it is not there);
and a RunPod job whose id was lost to a crash still calls back with the token, where `adopt`
makes it the job's result.
"""

import asyncio
import logging
import secrets
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

from orchestrator.deps import FlowDeps
from orchestrator.errors import FencedOut, NeedsOperator, Permanent, Transient, WorkCancelled
from orchestrator.jobs import ClaimedJob
from orchestrator.openrouter import OpenRouterClient
from orchestrator.outcomes import cancel_on_runpod
from orchestrator.payload import Submission, build_submission, validate
from orchestrator.policy import backoff_s, has_hangul
from orchestrator.settings import Settings
from orchestrator.timings import StageClock

log = logging.getLogger(__name__)

TRANSLATE_TRIES = 3
T = TypeVar("T")


async def submit(
    job: ClaimedJob, deps: FlowDeps, clock: StageClock | None = None
) -> tuple[str, datetime]:
    """Validate, translate, submit, and record the RunPod id before anything else happens."""
    clock = clock or StageClock()
    params = validate(job.input_data, job.user_id, job.work_id)
    with clock.stage("translate"):
        prompt, translation = await translate_prompt(params.prompt, deps)
    with clock.stage("submit"):
        submission = build_submission(params, prompt, translation, datetime.now(UTC))
        token = await _begin(job, deps, submission)
        submitted = await run_to_the_end(_run_and_record(job, deps, submission, token))
    log.info("job %s: submitted as RunPod %s (%s)", job.id, submitted[0], translation)
    return submitted


async def translate_prompt(prompt: str, deps: FlowDeps) -> tuple[str, str]:
    """The prompt to send and how it was made: `llm`, `skipped` or `fallback`."""
    if not has_hangul(prompt):
        return prompt, "skipped"
    if deps.openrouter is None:
        return prompt, "fallback"
    translated = await _translate(prompt, deps.openrouter)
    if translated is None:
        return prompt, "fallback"
    deps.alerts.resolve("openrouter")
    return translated, "llm"


async def _translate(prompt: str, openrouter: OpenRouterClient) -> str | None:
    for attempt in range(1, TRANSLATE_TRIES + 1):
        try:
            return await openrouter.translate(prompt)
        except NeedsOperator:
            raise
        except Permanent as exc:  # asking again would not help: send the prompt as it is
            log.warning("translation failed: %s", _describe(exc))
            return None
        except Exception as exc:  # any other failure: try again, then send the prompt as it is
            log.warning("translation attempt %d failed: %s", attempt, _describe(exc))
            if attempt < TRANSLATE_TRIES:
                await asyncio.sleep(backoff_s(attempt, base_s=0.5, cap_s=5.0))
    return None


async def _begin(job: ClaimedJob, deps: FlowDeps, submission: Submission) -> str:
    row = await deps.held(
        "begin_submission",
        job.id,
        work_id=job.work_id,
        webhook_token=secrets.token_urlsafe(24),
        metadata=submission.metadata,
    )
    if row is None:
        raise FencedOut(job.id)
    if not row["works"]:
        raise WorkCancelled(job.work_id)
    return str(row["webhook_token"])


async def run_to_the_end(coroutine: Coroutine[Any, Any, T]) -> T:
    """Await a step that must not be torn apart: a cancellation waits for it to finish first."""
    task = asyncio.ensure_future(coroutine)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        if not task.cancelled() and (failure := task.exception()) is not None:
            # Retrieved, so not reported as never retrieved; the cancellation goes on.
            log.warning("a step finished after its task was cancelled: %s", _describe(failure))
        raise


async def _run_and_record(
    job: ClaimedJob, deps: FlowDeps, submission: Submission, token: str
) -> tuple[str, datetime]:
    runpod_id = await deps.runpod.run(submission.input, webhook=webhook_url(deps.settings, token))
    deps.alerts.resolve("runpod")
    try:
        recorded = await _record(job, deps, runpod_id)
    except WorkCancelled:
        await cancel_on_runpod(deps, runpod_id)  # nothing was recorded
        raise
    except BaseException:
        # The record's answer was lost (a dropped connection, a bug): it may have committed. A
        # RunPod job the row holds is this job's run, resumed by whoever moves the job next.
        if await _recorded(job, deps, runpod_id) is False:
            await cancel_on_runpod(deps, runpod_id)
        raise
    if recorded is not None:
        return runpod_id, recorded
    # Not recordable: fenced out, or a webhook adopted an earlier submission of this job.
    await cancel_on_runpod(deps, runpod_id)
    adopted = await deps.held("held_submission", job.id)
    if adopted is None:
        raise FencedOut(job.id)
    log.warning("job %s: an earlier submission was adopted; awaiting it instead", job.id)
    return str(adopted["runpod_job_id"]), adopted["submitted_at"]


async def _record(job: ClaimedJob, deps: FlowDeps, runpod_id: str) -> datetime | None:
    """The RunPod id on the job and the work `processing`, in one statement; None when the job
    is no longer ours to record (fenced out, or an earlier submission was adopted)."""
    row = await deps.held("record_submission", job.id, work_id=job.work_id, runpod_job_id=runpod_id)
    if row is None or not row["mine"]:
        return None
    if row["submitted_at"] is None:
        raise WorkCancelled(job.work_id)  # nothing was recorded; the RunPod job is cancelled
    submitted_at: datetime = row["submitted_at"]
    return submitted_at


async def _recorded(job: ClaimedJob, deps: FlowDeps, runpod_id: str) -> bool | None:
    """Whether the job's row holds this RunPod job; None when the database cannot say (then,
    as after a crash, its webhook adopts it or the job waits for one before submitting again)."""
    try:
        row = await deps.db.one("job_submission", job_id=job.id)
    except Exception as exc:
        log.warning(
            "job %s: cannot tell whether RunPod %s was recorded (%s)",
            job.id,
            runpod_id,
            type(exc).__name__,
        )
        return None
    return row is not None and row["runpod_job_id"] == runpod_id


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, Transient | Permanent) else type(exc).__name__


def webhook_url(settings: Settings, token: str) -> str | None:
    """RunPod's completion webhook for a job, when this process has a public URL."""
    if not settings.public_base_url:
        return None
    return f"{settings.public_base_url.rstrip('/')}/runpod/webhook/{token}"
