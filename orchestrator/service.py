"""The running orchestrator: wake-ups, the claim loop, heartbeats, and in-flight jobs.

Three things wake the claimer (webhook, LISTEN, the periodic sweep); duplicates are harmless
because claiming is one SKIP LOCKED statement. A heartbeat renews every lease at once and
notices user cancellations and lost leases.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field

import psycopg

from orchestrator.claim import claim_jobs, release_job, renew_leases
from orchestrator.flow import FlowDeps, cancel, run_job
from orchestrator.jobs import ClaimedJob
from orchestrator.policy import backoff_s

log = logging.getLogger(__name__)

CHANNEL = "generation_job_created"


@dataclass
class InFlight:
    """A job this process is driving."""

    job: ClaimedJob
    task: asyncio.Task[None]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled_by_user: bool = False
    runpod_job_id: str | None = None


class Orchestrator:
    """Claims jobs up to MAX_IN_FLIGHT and drives each with flow.run_job."""

    def __init__(self, deps: FlowDeps, database_url: str) -> None:
        self.deps = deps
        self.settings = deps.settings
        self._database_url = database_url
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self.in_flight: dict[str, InFlight] = {}

    def nudge(self, source: str = "other") -> None:
        """Ask the claimer to look for work now (webhook, LISTEN, sweep)."""
        self.deps.metrics.wakeups.labels(source).inc()
        self._wakeup.set()

    def wake_job(self, job_id: str) -> bool:
        """Poll a job's RunPod status now (RunPod's completion webhook); False if not ours."""
        entry = self.in_flight.get(job_id)
        if entry is None:
            return False
        entry.wake.set()
        return True

    async def run(self) -> None:
        """Run every loop until stop() is called."""
        loops = [self._claim_loop, self._heartbeat_loop, self._listen_loop, self._sweep_loop]
        tasks = [asyncio.create_task(_guard(loop)) for loop in loops]
        await self._stopping.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._hand_over()

    def stop(self) -> None:
        """Stop claiming; in-flight jobs are handed over (their leases released)."""
        if self._stopping.is_set():
            return
        log.info("stopping: no new claims; handing in-flight jobs over")
        self._stopping.set()
        self._wakeup.set()

    async def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            # Cleared before the claim, so a wake-up arriving during it is kept, not lost.
            self._wakeup.clear()
            room = self.settings.max_in_flight - len(self.in_flight)
            jobs = await claim_jobs(
                self.deps.db,
                template_id=self.settings.klein_template_id,
                worker_id=self.settings.worker_id,
                lease_s=self.settings.lease_s,
                limit=room,
            )
            for job in jobs:
                self._start(job)
            if jobs and len(jobs) == room:
                continue  # a full batch: there may be more, and room will free up
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.settings.sweep_interval_s)

    def _start(self, job: ClaimedJob) -> None:
        log.info("job %s: claimed (work %s, %s)", job.id, job.work_id, job.work_status)
        wake = asyncio.Event()
        task = asyncio.create_task(self._drive(job, wake), name=f"job-{job.id}")
        self.in_flight[job.id] = InFlight(job=job, task=task, wake=wake)
        self.deps.metrics.in_flight.set(len(self.in_flight))

    async def _drive(self, job: ClaimedJob, wake: asyncio.Event) -> None:
        try:
            await run_job(job, self.deps, wake)
        except asyncio.CancelledError:
            entry = self.in_flight.get(job.id)
            if entry is not None and entry.cancelled_by_user:
                await asyncio.shield(cancel(job, self.deps, entry.runpod_job_id))
        finally:
            self.in_flight.pop(job.id, None)
            self.deps.metrics.in_flight.set(len(self.in_flight))
            self._wakeup.set()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            await self.heartbeat()

    async def heartbeat(self) -> None:
        """Renew every lease in one statement; stop lost jobs and user-cancelled ones."""
        held = await renew_leases(
            self.deps.db, worker_id=self.settings.worker_id, lease_s=self.settings.lease_s
        )
        for job_id, entry in list(self.in_flight.items()):
            if job_id not in held and not entry.task.done():
                log.warning("job %s: lease lost; stopping here", job_id)
                entry.task.cancel()
        rows = await self.deps.db.all("cancelled_jobs", job_ids=list(self.in_flight))
        for row in rows:
            cancelled = self.in_flight.get(str(row["id"]))
            if cancelled is not None and not cancelled.cancelled_by_user:
                cancelled.cancelled_by_user = True
                cancelled.runpod_job_id = row["runpod_job_id"]
                cancelled.task.cancel()

    async def _listen_loop(self) -> None:
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._database_url, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    failures = 0
                    self.nudge("listen")  # anything inserted while we were not listening
                    async for _notice in conn.notifies():
                        self.nudge("listen")
            except psycopg.Error as exc:
                failures += 1
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
                await asyncio.sleep(backoff_s(failures, cap_s=30.0))

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            await self.deps.db.one("settle_unclaimed_cancellations")
            self.nudge("sweep")

    async def _hand_over(self) -> None:
        entries = list(self.in_flight.values())
        for entry in entries:
            entry.task.cancel()
        await asyncio.gather(*(e.task for e in entries), return_exceptions=True)
        for entry in entries:
            with suppress(psycopg.Error):
                await release_job(
                    self.deps.db, job_id=entry.job.id, worker_id=self.settings.worker_id
                )
        log.info("handed over %d in-flight job(s)", len(entries))


async def _guard(loop: Callable[[], Awaitable[None]]) -> None:
    """Keep a loop alive through database hiccups: log, back off, go on."""
    failures = 0
    while True:
        try:
            await loop()
            return
        except (psycopg.Error, OSError) as exc:
            failures += 1
            log.error("%s failed (%s); retrying", getattr(loop, "__name__", "loop"), exc)
            await asyncio.sleep(backoff_s(failures, cap_s=30.0))
