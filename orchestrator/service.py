"""The running orchestrator: wake-ups, the claim loop, heartbeats, and in-flight jobs.

Three things wake the claimer (webhook, LISTEN, the periodic sweep); duplicates are harmless
because claiming is one SKIP LOCKED statement. A heartbeat renews, in one statement, the leases
of the jobs a live task is driving, and notices user cancellations and lost leases. Every loop
outlives any exception (logged, counted, backed off).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import psycopg

from orchestrator.claim import claim_jobs, release_job, renew_leases
from orchestrator.deps import FlowDeps
from orchestrator.flow import run_job
from orchestrator.jobs import ClaimedJob
from orchestrator.metrics import Metrics
from orchestrator.outcomes import cancel, cancel_on_runpod
from orchestrator.outputs import Delivery, JobWake
from orchestrator.policy import CallbackAction, backoff_s, callback_action
from orchestrator.webhook_scan import runpod_id_of

log = logging.getLogger(__name__)

CHANNEL = "generation_job_created"
LOOP_BACKOFF_CAP_S = 5.0


@dataclass
class InFlight:
    """A job this process is driving."""

    job: ClaimedJob
    task: asyncio.Task[None]
    wake: JobWake = field(default_factory=JobWake)
    cancelled_by_user: bool = False


class Orchestrator:
    """Claims jobs up to MAX_IN_FLIGHT and drives each with flow.run_job."""

    def __init__(self, deps: FlowDeps, database_url: str) -> None:
        self.deps = deps
        self.settings = deps.settings
        self._database_url = database_url
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self.in_flight: dict[str, InFlight] = {}
        self._background: set[asyncio.Task[None]] = set()

    def nudge(self, source: str = "other") -> None:
        """Ask the claimer to look for work now (webhook, LISTEN, sweep)."""
        self.deps.metrics.wakeups.labels(source).inc()
        self._wakeup.set()

    @property
    def operator_problems(self) -> dict[str, str]:
        """Open problems only an operator can fix (for /readyz)."""
        return self.deps.alerts.problems

    def wake_job(self, job_id: str) -> bool:
        """Poll a job's RunPod status now (RunPod's completion webhook); False if not ours."""
        entry = self.in_flight.get(job_id)
        if entry is None:
            return False
        entry.wake.set()
        return True

    async def delivery_for(self, job_id: str) -> Delivery | None:
        """An output slot for the body of a job's completion webhook: only for a job driven
        here, waited for at most WEBHOOK_SLOT_WAIT_S."""
        entry = self.in_flight.get(job_id)
        if entry is None:
            return None
        entry.wake.incoming += 1  # the job waits for this body rather than reading /status
        try:
            delivery = await self.deps.outputs.delivery(self.settings.webhook_slot_wait_s)
        finally:
            entry.wake.incoming -= 1
        if delivery is None:  # no room: the job reads its output from /status
            entry.wake.missed = True
            entry.wake.set()
        return delivery

    async def runpod_callback(
        self,
        token: str,
        job: Mapping[str, Any],
        runpod_id: str | None,
        delivery: Delivery | None = None,
    ) -> None:
        """RunPod's completion webhook for the job its token belongs to (its
        `job_by_webhook_token` row): hand its body (`delivery`) to the job or wake its poll,
        adopt the result of a submission whose id was lost, or cancel a stray RunPod job. A
        delivery not handed over is released by the caller."""
        job_id = str(job["id"])
        match callback_action(job["runpod_job_id"], job["status"], runpod_id):
            case CallbackAction.WAKE:
                entry = self.in_flight.get(job_id)
                if entry is not None and delivery is not None:
                    entry.wake.deliver(delivery)
                self.wake_job(job_id)
            case CallbackAction.ADOPT if runpod_id is not None:
                await self._adopt(token, job_id, runpod_id)
            case _ if runpod_id is not None:
                self._cancel_stray(job_id, runpod_id)

    async def open_delivery(self, delivery: Delivery) -> str | None:
        """Parse a delivered body, once, for its job; its RunPod id (None when it has none)."""
        body, delivery.body = delivery.body, b""
        try:
            delivery.status = await self.deps.runpod.parse_json(body)
        except (ValueError, RecursionError):
            return None  # the job is still woken: it reads its status itself
        return runpod_id_of(delivery.status)

    async def _adopt(self, token: str, job_id: str, runpod_id: str) -> None:
        row = await self.deps.db.one(
            "adopt_submission", timeout_s=2.0, token=token, runpod_job_id=runpod_id
        )
        if row is None:  # recorded or finished meanwhile
            self._cancel_stray(job_id, runpod_id)
            return
        log.warning("job %s: adopted RunPod %s, whose id was never recorded", job_id, runpod_id)
        self.deps.metrics.orphans.labels("adopted").inc()
        self.nudge("webhook")
        self.wake_job(job_id)

    def _cancel_stray(self, job_id: str, runpod_id: str) -> None:
        task = asyncio.create_task(self._stop_stray(job_id, runpod_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _stop_stray(self, job_id: str, runpod_id: str) -> None:
        """Cancel a RunPod job that came back under this job's token but is not its recorded
        one (a submission whose id was lost), unless another job recorded it: then the token
        was used for someone else's run (leaked, or a confused sender), and it is left alone."""
        try:
            holder = await self.deps.db.one(
                "runpod_job_holder", timeout_s=2.0, runpod_job_id=runpod_id, job_id=job_id
            )
        except Exception as exc:  # cannot tell whose it is: leave it (its own job's deadline holds)
            log.warning(
                "job %s: RunPod %s is not its recorded job, and whose it is cannot be read (%s);"
                " left alone",
                job_id,
                runpod_id,
                type(exc).__name__,
            )
            return
        if holder is not None:
            log.warning(
                "job %s: its webhook named RunPod %s, which job %s recorded; ignored",
                job_id,
                runpod_id,
                holder["id"],
            )
            self.deps.metrics.orphans.labels("ignored").inc()
            return
        log.warning("job %s: RunPod %s is not its recorded job; cancelling it", job_id, runpod_id)
        self.deps.metrics.orphans.labels("cancelled").inc()
        await cancel_on_runpod(self.deps, runpod_id)

    async def run(self) -> None:
        """Run every loop until stop() is called."""
        loops = [self._claim_loop, self._heartbeat_loop, self._listen_loop, self._sweep_loop]
        tasks = [asyncio.create_task(_guard(loop, self.deps.metrics)) for loop in loops]
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
        current = self.in_flight.get(job.id)
        if current is not None and not current.task.done():
            # Our own lease ran out (a stalled heartbeat) and the claim took it back: the task
            # driving it goes on; a second one would race it under the same locked_by.
            return
        log.info("job %s: claimed (work %s, %s)", job.id, job.work_id, job.work_status)
        wake = JobWake()
        task = asyncio.create_task(self._drive(job, wake), name=f"job-{job.id}")
        self.in_flight[job.id] = InFlight(job=job, task=task, wake=wake)
        self.deps.metrics.in_flight.set(len(self.in_flight))

    async def _drive(self, job: ClaimedJob, wake: JobWake) -> None:
        try:
            await run_job(job, self.deps, wake)
        except asyncio.CancelledError:
            entry = self.in_flight.get(job.id)
            if entry is not None and entry.cancelled_by_user:
                await asyncio.shield(self._cancel_for_user(job))
        except Exception:
            # Not even the outcome could be written (the database is gone, most likely). The
            # lease is no longer renewed, so the job is resumed once it runs out.
            log.exception("job %s: stopped without an outcome; resumed after its lease", job.id)
        finally:
            wake.discard()
            self.in_flight.pop(job.id, None)
            self.deps.metrics.in_flight.set(len(self.in_flight))
            self._wakeup.set()

    async def _cancel_for_user(self, job: ClaimedJob) -> None:
        try:
            await cancel(job, self.deps)
        except Exception:
            log.exception("job %s: the cancellation could not be written; retried", job.id)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            await self.heartbeat()

    async def heartbeat(self) -> None:
        """Renew the leases of the jobs being driven; stop lost jobs and user-cancelled ones."""
        driving = [job_id for job_id, entry in self.in_flight.items() if not entry.task.done()]
        held = await renew_leases(
            self.deps.db,
            job_ids=driving,
            worker_id=self.settings.worker_id,
            lease_s=self.settings.lease_s,
        )
        rows = await self.deps.db.all(
            "cancelled_jobs", job_ids=driving, worker_id=self.settings.worker_id
        )
        cancelled = {str(row["id"]) for row in rows}
        for job_id in cancelled:
            entry = self.in_flight.get(job_id)
            if entry is not None and not entry.cancelled_by_user:
                entry.cancelled_by_user = True
                entry.task.cancel()
        # Only the jobs asked about can be lost: one claimed during the renewal is not. A job
        # whose row the user cancelled is no longer renewed, yet still ours to cancel.
        for job_id in set(driving) - held - cancelled:
            entry = self.in_flight.get(job_id)
            if entry is not None and not entry.task.done():
                log.warning("job %s: lease lost; stopping here", job_id)
                entry.task.cancel()

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
                await asyncio.sleep(backoff_s(failures, cap_s=LOOP_BACKOFF_CAP_S))

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            settled = await self.deps.db.all("settle_unclaimed_cancellations")
            for row in settled:
                log.info("job %s: cancelled (nobody held it)", row["job_id"])
            # Each job's RunPod run (a job resumed later, or one whose holder died) is stopped.
            runpod_ids = {row["runpod_job_id"] for row in settled} - {None}
            await asyncio.gather(*(cancel_on_runpod(self.deps, i) for i in runpod_ids))
            self.nudge("sweep")

    async def _hand_over(self) -> None:
        entries = list(self.in_flight.values())
        for entry in entries:
            entry.task.cancel()
        await asyncio.gather(*(e.task for e in entries), return_exceptions=True)
        for entry in entries:
            with suppress(Exception):
                await release_job(
                    self.deps.db, job_id=entry.job.id, worker_id=self.settings.worker_id
                )
        log.info("handed over %d in-flight job(s)", len(entries))


async def _guard(loop: Callable[[], Awaitable[None]], metrics: Metrics) -> None:
    """Keep a loop alive through anything it raises: log, count, back off, go on."""
    name = getattr(loop, "__name__", "loop").strip("_")
    failures = 0
    while True:
        try:
            await loop()
            return
        except Exception:
            failures += 1
            metrics.loop_failures.labels(name).inc()
            log.exception("%s failed; restarting it", name)
            await asyncio.sleep(backoff_s(failures, cap_s=LOOP_BACKOFF_CAP_S))
