"""Waiting for RunPod: adaptive polling, woken early by RunPod's completion webhook, bounded by
JOB_TIMEOUT_S from submission."""

import asyncio
import logging
import time
from datetime import datetime

from orchestrator.deps import FlowDeps
from orchestrator.errors import Permanent, Transient
from orchestrator.jobs import ClaimedJob
from orchestrator.outcomes import cancel_on_runpod
from orchestrator.policy import backoff_s
from orchestrator.runpod import RunPodJob

log = logging.getLogger(__name__)


async def await_result(
    job: ClaimedJob, runpod_id: str, submitted_at: datetime, deps: FlowDeps, wake: asyncio.Event
) -> RunPodJob:
    """Poll RunPod (sooner when its webhook wakes us) until the job ends or the deadline passes.
    A COMPLETED answer comes back holding one of `deps.outputs`' slots (see outputs.py)."""
    settings = deps.settings
    deadline = submitted_at.timestamp() + settings.job_timeout_s
    failures = 0
    with deps.polls.awaiting_job():
        while (remaining := deadline - time.time()) > 0:
            try:
                status = await deps.outputs.status(deps.runpod, runpod_id)
                failures = 0
            except Transient as exc:
                failures += 1
                status = None
                log.warning("job %s: status check failed (%s)", job.id, exc)
            if status is not None and status.finished:
                return status
            wait = deps.polls.interval_s(settings.poll_min_interval_s)
            if failures:
                wait = max(wait, backoff_s(failures, cap_s=settings.poll_max_interval_s))
            await _sleep_or_wake(wake, min(wait, remaining))
    await cancel_on_runpod(deps, runpod_id)
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
