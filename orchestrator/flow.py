"""One job's whole story, resumed at its stage: validate, translate, submit, await, store, title,
finalize. Each step is idempotent; every write is fenced on this process holding the job."""

import asyncio
import base64
import io
import logging
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from PIL import Image

from handler.errors import InvalidInput
from handler.reference_image import verify_image
from orchestrator.db import Database, fetch_one
from orchestrator.errors import (
    FencedOut,
    NeedsOperator,
    Permanent,
    RunPodJobGone,
    Transient,
    WorkCancelled,
)
from orchestrator.jobs import ClaimedJob, JobStatus, WorkStatus
from orchestrator.logs import bind_job
from orchestrator.metrics import Metrics
from orchestrator.openrouter import OpenRouterClient
from orchestrator.payload import build_submission, validate
from orchestrator.policy import backoff_s, clean_title, has_hangul, poll_interval_s
from orchestrator.runpod import RunPodClient, RunPodJob
from orchestrator.settings import Settings
from orchestrator.storage import Storage, output_path

log = logging.getLogger(__name__)

TAGS = ["I2I", "Image_to_Image", "AI생성"]
FILES_NAMESPACE = uuid.UUID("6f0c7a52-64c7-4f5e-9a37-5d1b1f3f2c11")
INVALID_OUTPUT = "RunPod returned an invalid image"
TRANSLATE_TRIES = 3
OUTCOME_LABELS = {JobStatus.PENDING: "retry_later", JobStatus.TAKEN: "handed_over"}


@dataclass(frozen=True)
class FlowDeps:
    """The outside systems a job touches."""

    db: Database
    runpod: RunPodClient
    openrouter: OpenRouterClient | None
    storage: Storage
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)


async def run_job(job: ClaimedJob, deps: FlowDeps, wake: asyncio.Event) -> JobStatus:
    """Carry a claimed job to a terminal state (or back to pending on a transient failure)."""
    bind_job(job.id, job.work_id)
    outcome = await _run_guarded(job, deps, wake)
    deps.metrics.jobs.labels(OUTCOME_LABELS.get(outcome, outcome.value)).inc()
    return outcome


async def _run_guarded(job: ClaimedJob, deps: FlowDeps, wake: asyncio.Event) -> JobStatus:
    # Outermost: a fence met while recording a failure stops the job quietly too.
    try:
        return await _run_settled(job, deps, wake)
    except FencedOut:
        log.warning("job %s: another process holds it now; stopping", job.id)
        return JobStatus.TAKEN


async def _run_settled(job: ClaimedJob, deps: FlowDeps, wake: asyncio.Event) -> JobStatus:
    try:
        return await _run(job, deps, wake)
    except NeedsOperator as exc:
        log.error("job %s: %s; the job waits for an operator", job.id, exc)
        return await retry_later(job, deps, str(exc), delay_s=60.0)
    except Transient as exc:
        delay = backoff_s(job.retries + 1, base_s=2.0, cap_s=300.0, retry_after_s=exc.retry_after_s)
        return await retry_later(job, deps, str(exc), delay_s=delay)
    except (Permanent, InvalidInput) as exc:
        return await fail(job, deps, str(exc))
    except WorkCancelled:
        return await cancel(job, deps)


async def _run(job: ClaimedJob, deps: FlowDeps, wake: asyncio.Event) -> JobStatus:
    if job.work_status is WorkStatus.CANCELLED:
        return await cancel(job, deps)
    if job.work_status in (WorkStatus.COMPLETED, WorkStatus.FAILED):
        return await finish(job, deps, JobStatus(job.work_status.value), None)
    runpod_id, submitted_at = job.runpod_job_id, job.submitted_at
    for _attempt in range(deps.settings.max_attempts):
        if runpod_id is None or submitted_at is None:
            with deps.metrics.stage_seconds.labels("submit").time():
                runpod_id, submitted_at = await submit(job, deps)
        try:
            with deps.metrics.stage_seconds.labels("await").time():
                result = await await_result(job, runpod_id, submitted_at, deps, wake)
        except RunPodJobGone as exc:
            log.warning("job %s: %s; submitting again", job.id, exc)
            await forget_submission(job, deps, str(exc))
            runpod_id = submitted_at = None
            continue
        return await conclude(job, result, deps)
    return await fail(job, deps, "RunPod lost the job too many times")


async def submit(job: ClaimedJob, deps: FlowDeps) -> tuple[str, datetime]:
    """Validate, translate, submit, and record the RunPod id before anything else happens."""
    params = validate(job.input_data, job.user_id, job.work_id)
    prompt, translation = await translate_prompt(params.prompt, deps.openrouter)
    submission = build_submission(params, prompt, translation, datetime.now(UTC))
    token = secrets.token_urlsafe(24)
    webhook = _webhook_url(deps.settings, token)
    runpod_id = await deps.runpod.run(submission.input, webhook=webhook)
    async with deps.db.transaction() as conn:
        row = await fetch_one(
            conn,
            "record_submission",
            job_id=job.id,
            worker_id=deps.settings.worker_id,
            runpod_job_id=runpod_id,
            webhook_token=token,
        )
        if row is None:
            raise FencedOut(job.id)
        await fetch_one(
            conn,
            "mark_work_processing",
            work_id=job.work_id,
            runpod_job_id=runpod_id,
            metadata=submission.metadata,
        )
    log.info("job %s: submitted as RunPod %s (%s)", job.id, runpod_id, translation)
    return runpod_id, row["submitted_at"]


def _webhook_url(settings: Settings, token: str) -> str | None:
    if not settings.public_base_url:
        return None
    return f"{settings.public_base_url.rstrip('/')}/runpod/webhook/{token}"


async def translate_prompt(prompt: str, openrouter: OpenRouterClient | None) -> tuple[str, str]:
    """The prompt to send and how it was made: `llm`, `skipped` or `fallback`."""
    if not has_hangul(prompt):
        return prompt, "skipped"
    if openrouter is None:
        return prompt, "fallback"
    for attempt in range(1, TRANSLATE_TRIES + 1):
        try:
            return await openrouter.translate(prompt), "llm"
        except NeedsOperator:
            raise
        except (Transient, Permanent) as exc:
            log.warning("translation attempt %d failed: %s", attempt, exc)
            if attempt < TRANSLATE_TRIES:
                await asyncio.sleep(backoff_s(attempt, base_s=0.5, cap_s=5.0))
    return prompt, "fallback"


async def await_result(
    job: ClaimedJob, runpod_id: str, submitted_at: datetime, deps: FlowDeps, wake: asyncio.Event
) -> RunPodJob:
    """Poll RunPod (sooner when its webhook wakes us) until the job ends or the deadline passes."""
    settings = deps.settings
    deadline = submitted_at.timestamp() + settings.job_timeout_s
    failures = 0
    while (remaining := deadline - time.time()) > 0:
        try:
            status = await deps.runpod.status(runpod_id)
            failures = 0
        except Transient as exc:
            failures += 1
            status = None
            log.warning("job %s: status check failed (%s)", job.id, exc)
        if status is not None and status.finished:
            return status
        elapsed = time.time() - submitted_at.timestamp()
        wait = poll_interval_s(elapsed, settings.poll_min_interval_s, settings.poll_max_interval_s)
        if failures:
            wait = max(wait, backoff_s(failures, cap_s=settings.poll_max_interval_s))
        await _sleep_or_wake(wake, min(wait, remaining))
    await deps.runpod.cancel(runpod_id)
    raise Permanent(
        f"Timed out after {settings.job_timeout_s:g} s waiting for RunPod "
        "(the RunPod job was cancelled)"
    )


async def _sleep_or_wake(wake: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(wake.wait(), timeout=seconds)
    except TimeoutError:
        return
    finally:
        wake.clear()


async def conclude(job: ClaimedJob, result: RunPodJob, deps: FlowDeps) -> JobStatus:
    """Turn RunPod's terminal status into ours."""
    match result.status:
        case "COMPLETED":
            return await complete(job, result.output, deps)
        case "CANCELLED":
            return await cancel(job, deps)
        case "TIMED_OUT":
            return await fail(job, deps, "Timed out on RunPod (execution timeout reached)")
        case _:
            return await fail(job, deps, result.error or "RunPod reported the job FAILED")


def decode_output(output: object) -> tuple[bytes, int, int]:
    """The PNG in `output.image`, verified, with its real size."""
    image = output.get("image") if isinstance(output, Mapping) else None
    if not isinstance(image, str):
        raise Permanent(INVALID_OUTPUT)
    try:
        data = base64.b64decode(image, validate=True)
        verified = verify_image(data, max_pixels=64_000_000)
    except (ValueError, InvalidInput):
        raise Permanent(INVALID_OUTPUT) from None
    return data, verified.width, verified.height


async def complete(job: ClaimedJob, output: object, deps: FlowDeps) -> JobStatus:
    """Store the image, title it, and finalize everything in one transaction."""
    data, width, height = decode_output(output)
    path = output_path(job.user_id or "", job.work_id)
    stage = deps.metrics.stage_seconds
    with stage.labels("store").time():
        url = await deps.storage.put_png(path, data)
    with stage.labels("title").time():
        title = await make_title(data, deps.openrouter)
    with stage.labels("finalize").time():
        await finalize(job, deps, path=path, url=url, title=title, size=(width, height))
    log.info("job %s: completed (%dx%d, %r)", job.id, width, height, title)
    return JobStatus.COMPLETED


async def make_title(data: bytes, openrouter: OpenRouterClient | None) -> str:
    """A short Korean title from the vision model; the seed's fallback on any failure."""
    if openrouter is None:
        return clean_title(None)
    try:
        return clean_title(await openrouter.title(_thumbnail_data_url(data)))
    except (Transient, Permanent) as exc:
        log.warning("title failed (%s); using the fallback", exc)
        return clean_title(None)


def _thumbnail_data_url(data: bytes, side: int = 512) -> str:
    """A small JPEG data URL: the model sees the image without needing a public URL."""
    with Image.open(io.BytesIO(data)) as image:
        image.thumbnail((side, side))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


async def finalize(
    job: ClaimedJob, deps: FlowDeps, *, path: str, url: str, title: str, size: tuple[int, int]
) -> None:
    """files row, completed work and completed job, all or nothing."""
    width, height = size
    file_id = uuid.uuid5(FILES_NAMESPACE, f"{deps.storage.bucket}/{path}")
    output_data = {
        "image_url": url,
        "filename": path.rsplit("/", 1)[-1],
        "width": width,
        "height": height,
    }
    async with deps.db.transaction() as conn:
        await fetch_one(
            conn,
            "upsert_file",
            file_id=file_id,
            user_id=job.user_id,
            bucket_id=deps.storage.bucket,
            path=path,
            width=width,
            height=height,
            file_url=url,
        )
        work = await fetch_one(
            conn,
            "complete_work",
            work_id=job.work_id,
            file_id=file_id,
            title=title,
            output_data=output_data,
            tags=TAGS,
            metadata_patch={"width": width, "height": height},
        )
        if work is None:
            if await fetch_one(conn, "work_is_cancelled", work_id=job.work_id):
                raise WorkCancelled(job.work_id)  # rolls the files row back too
            raise Permanent("the work was no longer in progress when its image arrived")
        await _finish_in(conn, job, deps, JobStatus.COMPLETED, None)


async def _finish_in(
    conn: Any, job: ClaimedJob, deps: FlowDeps, status: JobStatus, error: str | None
) -> None:
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


async def finish(
    job: ClaimedJob, deps: FlowDeps, status: JobStatus, error: str | None
) -> JobStatus:
    """End the job row alone (its work is already final)."""
    async with deps.db.transaction() as conn:
        await _finish_in(conn, job, deps, status, error)
    return status


async def fail(job: ClaimedJob, deps: FlowDeps, message: str) -> JobStatus:
    """Failed work (with the message) and failed job, together."""
    log.warning("job %s: failed: %s", job.id, message)
    async with deps.db.transaction() as conn:
        await fetch_one(conn, "fail_work", work_id=job.work_id, error=message)
        await _finish_in(conn, job, deps, JobStatus.FAILED, message)
    return JobStatus.FAILED


async def cancel(job: ClaimedJob, deps: FlowDeps, runpod_id: str | None = None) -> JobStatus:
    """The user's cancellation: RunPod's job cancelled too, then both rows cancelled."""
    runpod_id = runpod_id or job.runpod_job_id
    if runpod_id:
        try:
            await deps.runpod.cancel(runpod_id)
        except (Transient, Permanent) as exc:
            log.warning("job %s: RunPod cancel failed (%s); marking cancelled anyway", job.id, exc)
    async with deps.db.transaction() as conn:
        await fetch_one(conn, "cancel_work", work_id=job.work_id)
        await _finish_in(conn, job, deps, JobStatus.CANCELLED, None)
    log.info("job %s: cancelled", job.id)
    return JobStatus.CANCELLED


async def retry_later(job: ClaimedJob, deps: FlowDeps, error: str, delay_s: float) -> JobStatus:
    """Back to pending, due after a delay; a submitted job keeps its RunPod id."""
    log.warning("job %s: will retry in %.0f s: %s", job.id, delay_s, error)
    await deps.db.one(
        "retry_later",
        job_id=job.id,
        worker_id=deps.settings.worker_id,
        delay_s=delay_s,
        error=error,
    )
    return JobStatus.PENDING


async def forget_submission(job: ClaimedJob, deps: FlowDeps, error: str) -> None:
    """Clear the RunPod id RunPod itself forgot, so the job is submitted again."""
    row = await deps.db.one(
        "forget_submission", job_id=job.id, worker_id=deps.settings.worker_id, error=error
    )
    if row is None:
        raise FencedOut(job.id)
