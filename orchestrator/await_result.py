"""Waiting for RunPod: adaptive polling, woken early by RunPod's completion webhook, bounded by
JOB_TIMEOUT_S from submission."""

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg

from orchestrator.deps import FlowDeps
from orchestrator.errors import Permanent, Transient
from orchestrator.jobs import ClaimedJob
from orchestrator.outcomes import cancel_on_runpod
from orchestrator.outputs import JobWake
from orchestrator.policy import backoff_s, progress_due
from orchestrator.runpod import Progress, RunPodJob

# A progress write waits at most this long for a pooled connection: it is worth less than the
# polling it would hold up.
PROGRESS_WRITE_WAIT_S = 2.0

log = logging.getLogger(__name__)


async def await_result(
    job: ClaimedJob, runpod_id: str, submitted_at: datetime, deps: FlowDeps, wake: JobWake
) -> RunPodJob:
    """Poll RunPod (sooner when its webhook wakes us) until the job ends or the deadline passes;
    a status its webhook delivered ends the wait without a poll. A COMPLETED answer comes back
    holding one of `deps.outputs`' slots (see outputs.py)."""
    settings = deps.settings
    deadline = submitted_at.timestamp() + settings.job_timeout_s
    failures = 0
    recorder = ProgressRecorder(job, deps)
    webhooks = settings.public_base_url is not None
    webhook = WebhookGrace(webhooks, settings.webhook_grace_s, wake)
    # With the webhook on, polls are for progress (and a lost webhook): no more often than
    # progress is written. They were klein serve's largest cost (bench/full_path.py).
    poll_s = settings.poll_min_interval_s
    if webhooks:
        poll_s = max(poll_s, settings.progress_write_interval_s)
    with deps.polls.awaiting_job(), wake.awaiting():
        while (remaining := deadline - time.time()) > 0:
            delivery = wake.take()
            if delivery is not None:
                delivered = deps.outputs.adopt(runpod_id, delivery)
                if delivered is not None:
                    deps.metrics.results.labels("webhook").inc()
                    return delivered
            if webhook.awaited():
                # Over, and its webhook (the output) still expected: no request meanwhile.
                await _sleep_or_wake(wake, min(webhook.pause_s(), remaining))
                continue
            # A job that is over may wait long for a slot (behind every webhook): not past its
            # deadline.
            bound = asyncio.timeout(remaining)
            try:
                async with bound:
                    status = await deps.outputs.status(
                        deps.runpod,
                        runpod_id,
                        wake,
                        read=not webhook.expected(),
                        over=webhook.over(),
                    )
                failures = 0
            except TimeoutError:
                if not bound.expired():
                    raise
                break
            except Transient as exc:
                failures += 1
                status = None
                log.warning("job %s: status check failed (%s)", job.id, exc)
            if status is not None and status.unread:
                # Over, its output not read: the completion webhook brings it (or has brought
                # it); when it is no longer expected, the next round reads it from /status.
                webhook.finished_seen()
                continue
            if status is not None and status.finished:
                deps.metrics.results.labels("status").inc()
                return status
            if status is not None:
                await recorder.offer(status.progress)
            wait = deps.polls.interval_s(poll_s)
            if failures:
                wait = max(wait, backoff_s(failures, cap_s=settings.poll_max_interval_s))
            await _sleep_or_wake(wake, min(wait, remaining))
    await cancel_on_runpod(deps, runpod_id)
    raise Permanent(
        f"Timed out after {settings.job_timeout_s:g} s waiting for RunPod "
        "(the RunPod job was cancelled)"
    )


class WebhookGrace:
    """When RunPod's completion webhook is on, a poll that finds the job over (an `unread`
    answer) makes the job wait for the webhook, which brings the output, instead of reading
    it from /status as well: each output then crosses the network once, not twice. It waits
    WEBHOOK_GRACE_S for the webhook to come, and while its webhook waits for an output slot.
    Then it waits for a slot to read /status in, behind every webhook waiting for one
    (OutputSlots.status, `over`), and takes its webhook's body instead if that comes first; at
    once when its webhook came and found no slot to keep the body in (`JobWake.missed`)."""

    PAUSE_S = 1.0  # how often a waiting job looks again (a delivery wakes it at once)

    def __init__(self, enabled: bool, grace_s: float, wake: JobWake) -> None:
        self._enabled = enabled
        self._grace_s = grace_s
        self._wake = wake
        self._seen_at: float | None = None

    def expected(self) -> bool:
        """True while the webhook is waited for, without a request: within the grace, or while
        it waits for a slot; no longer once it came and found none."""
        if not self._enabled or self._wake.incoming:
            return self._enabled
        if self._wake.missed:
            return False
        return self._seen_at is None or time.monotonic() - self._seen_at < self._grace_s

    def awaited(self) -> bool:
        """True while the job is known to be over and its webhook is expected."""
        return self._seen_at is not None and self.expected() and not self._wake.has_delivery()

    def over(self) -> bool:
        """True once the job is known to be over: a poll found it so, or its webhook came."""
        return self._seen_at is not None or self._wake.missed

    def finished_seen(self) -> None:
        """A poll found the job over."""
        if self._seen_at is None:
            self._seen_at = time.monotonic()

    def pause_s(self) -> float:
        """How long to wait before looking again."""
        seen_at = time.monotonic() if self._seen_at is None else self._seen_at
        left = self._grace_s - (time.monotonic() - seen_at)
        return min(self.PAUSE_S, left) if left > 0 else self.PAUSE_S


async def _sleep_or_wake(wake: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(wake.wait(), timeout=seconds)
    except TimeoutError:
        return
    finally:
        wake.clear()


class ProgressRecorder:
    """Writes a job's progress on its work when it changed, at most once per
    `progress_write_interval_s`; advisory, so a failed write is logged and the wait goes on."""

    def __init__(
        self, job: ClaimedJob, deps: FlowDeps, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._job = job
        self._deps = deps
        self._clock = clock
        self._recorded: Progress | None = None
        self._recorded_at = float("-inf")

    async def offer(self, progress: Progress | None) -> None:
        """Record `progress` if the gate lets it through."""
        now = self._clock()
        interval_s = self._deps.settings.progress_write_interval_s
        since_s = now - self._recorded_at
        if progress is None or not progress_due(progress, self._recorded, since_s, interval_s):
            return
        self._recorded, self._recorded_at = progress, now
        try:
            await self._deps.db.one(
                "record_progress",
                timeout_s=PROGRESS_WRITE_WAIT_S,
                job_id=self._job.id,
                worker_id=self._deps.settings.worker_id,
                progress=progress.as_json(datetime.now(UTC)),
            )
        except psycopg.Error as exc:
            log.warning("job %s: progress not recorded (%s)", self._job.id, type(exc).__name__)
