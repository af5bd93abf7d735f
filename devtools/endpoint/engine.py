"""The endpoint's state: the job table, the FIFO queue, the workers and webhook delivery.

Everything here runs on the server's event loop, so the table needs no lock. Each job runs on a
daemon thread of its own, not a pool's: a timed-out or cancelled runner cannot be stopped, so its
thread must neither hold a worker slot nor keep the process from exiting.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import threading
from collections import Counter
from collections.abc import Callable, Coroutine
from contextlib import suppress
from typing import Any

import httpx

from devtools.endpoint import jobs
from devtools.endpoint.config import EndpointConfig
from devtools.endpoint.jobs import Job, JobRequest, Outcome, RunPodStatus
from devtools.endpoint.limits import Injections
from devtools.endpoint.runner import JobRunner, ProgressSource, Stoppable
from devtools.endpoint.webhook import deliver_webhook

log = logging.getLogger(__name__)


class LocalEndpoint:
    """Jobs submitted, queued, run on `config.workers` workers, reported and forgotten."""

    def __init__(
        self, config: EndpointConfig, runner: JobRunner, clock: Callable[[], float]
    ) -> None:
        self._config = config
        self._runner = runner
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self._expiry: list[tuple[float, str]] = []  # a heap; entries may be stale
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._busy = 0
        self._ended_counts: Counter[RunPodStatus] = Counter()
        self._http: httpx.AsyncClient | None = None
        self.injections = Injections()

    def inject(self, status_code: int = 429, times: int = 1, route: str = "status") -> None:
        """A development hook: the next `times` requests to `route` answer `status_code`, to
        play RunPod's rate limits and outages on purpose."""
        self.injections.add(status_code, times, route)

    async def start(self) -> None:
        """Start the workers."""
        self._http = httpx.AsyncClient(timeout=self._config.webhook_timeout_s)
        for number in range(1, self._config.workers + 1):
            self._spawn_task(self._work(f"local-worker-{number}"))

    async def stop(self) -> None:
        """Stop the workers and pending webhooks; runner threads are left to end on their own."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    def submit(self, request: JobRequest, *, sync: bool = False) -> Job:
        """Queue a job."""
        self._sweep()
        retention_s = (
            self._config.sync_result_retention_s if sync else self._config.result_retention_s
        )
        job = Job(jobs.new_job_id(sync=sync), request, retention_s, self._clock())
        self._jobs[job.id] = job
        self._ended[job.id] = asyncio.Event()
        self._queue.put_nowait(job.id)
        heapq.heappush(self._expiry, (jobs.forget_at(job), job.id))
        return job

    def status(self, job_id: str) -> dict[str, Any] | None:
        """The /status body, or None for an unknown or forgotten job."""
        self._sweep()
        job = self._jobs.get(job_id)
        return None if job is None else self._body(job)

    async def wait_for_end(self, job_id: str, timeout_s: float) -> None:
        """Return when the job has ended or is forgotten, or after `timeout_s`."""
        ended = self._ended.get(job_id)
        if ended is not None:
            with suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), timeout_s)

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a queued or running job (a finished one keeps its status); None if unknown."""
        self._sweep()
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.status not in jobs.TERMINAL:
            running = job.status is RunPodStatus.IN_PROGRESS
            self._end(job, Outcome(RunPodStatus.CANCELLED))
            log.info("job %s cancelled", job_id)
            if running:
                self._stop_runner(job_id)
        return {"id": job_id, "status": self._jobs[job_id].status.value}

    def purge_queue(self) -> int:
        """Forget every queued job; running ones go on. The number removed."""
        self._sweep()
        queued = [j.id for j in self._jobs.values() if j.status is RunPodStatus.IN_QUEUE]
        for job_id in queued:
            self._forget(job_id)
        return len(queued)

    def health(self) -> dict[str, Any]:
        """RunPod's /health body; completed and failed count since start."""
        self._sweep()
        live = Counter(job.status for job in self._jobs.values())
        failed = (
            self._ended_counts[RunPodStatus.FAILED] + self._ended_counts[RunPodStatus.TIMED_OUT]
        )
        return {
            "jobs": {
                "completed": self._ended_counts[RunPodStatus.COMPLETED],
                "failed": failed,
                "inProgress": live[RunPodStatus.IN_PROGRESS],
                "inQueue": live[RunPodStatus.IN_QUEUE],
                "retried": 0,
            },
            "workers": {"idle": self._config.workers - self._busy, "running": self._busy},
        }

    def _body(self, job: Job) -> dict[str, Any]:
        progress = None
        if job.status is RunPodStatus.IN_PROGRESS and isinstance(self._runner, ProgressSource):
            progress = self._runner.progress(job.id)
        return jobs.status_body(job, progress)

    async def _work(self, worker_id: str) -> None:
        while True:
            job_id = await self._queue.get()
            job = self._take(job_id, worker_id)
            if job is None:
                continue
            self._busy += 1
            try:
                await self._execute(job)
            finally:
                self._busy -= 1

    def _take(self, job_id: str, worker_id: str) -> Job | None:
        self._sweep()
        job = self._jobs.get(job_id)
        if job is None or job.status is not RunPodStatus.IN_QUEUE:
            return None  # cancelled, purged or past its TTL while queued
        job = jobs.started(job, self._clock(), worker_id)
        self._jobs[job_id] = job
        return job

    async def _execute(self, job: Job) -> None:
        self._start_thread(job)
        deadline_s = jobs.run_deadline_s(job, self._clock())
        try:
            await asyncio.wait_for(self._ended[job.id].wait(), deadline_s)
        except TimeoutError:
            self._on_deadline(job.id)

    def _start_thread(self, job: Job) -> None:
        loop = asyncio.get_running_loop()

        def run() -> None:
            try:
                outcome = jobs.outcome_of_output(self._runner.run(job.id, job.request.input))
            except Exception as exc:
                log.exception("job %s: the runner raised", job.id)
                outcome = jobs.outcome_of_exception(exc)
            with suppress(RuntimeError):  # the loop is gone: the server stopped meanwhile
                loop.call_soon_threadsafe(self._settle, job.id, outcome)

        threading.Thread(target=run, name=f"job-{job.id}", daemon=True).start()

    def _settle(self, job_id: str, outcome: Outcome) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.status is not RunPodStatus.IN_PROGRESS:
            return  # cancelled, timed out or forgotten meanwhile: the result is discarded
        self._end(job, outcome)
        log.info("job %s %s", job_id, outcome.status.value)

    def _on_deadline(self, job_id: str) -> None:
        self._sweep()  # past its TTL: forgotten, not timed out
        job = self._jobs.get(job_id)
        if job is not None and job.status is RunPodStatus.IN_PROGRESS:
            self._end(job, Outcome(RunPodStatus.TIMED_OUT))
            log.warning("job %s timed out after %g s", job_id, job.request.execution_timeout_s)
            self._stop_runner(job_id)

    def _stop_runner(self, job_id: str) -> None:
        """Tell a runner that can stop early (the real handler interrupts ComfyUI) to do so."""
        if isinstance(self._runner, Stoppable):
            self._runner.stop(job_id)

    def _end(self, job: Job, outcome: Outcome) -> None:
        job = jobs.finished(job, outcome, self._clock())
        self._jobs[job.id] = job
        heapq.heappush(self._expiry, (jobs.forget_at(job), job.id))
        self._ended_counts[job.status] += 1
        self._ended[job.id].set()
        if job.request.webhook is not None and self._http is not None:
            body = self._body(job)
            config = self._config
            self._spawn_task(
                deliver_webhook(
                    self._http,
                    job.request.webhook,
                    body,
                    config.webhook_attempts,
                    config.webhook_retry_delay_s,
                )
            )

    def _sweep(self) -> None:
        now = self._clock()
        while self._expiry and self._expiry[0][0] <= now:
            _, job_id = heapq.heappop(self._expiry)
            job = self._jobs.get(job_id)
            if job is not None and jobs.forget_at(job) <= now:
                self._forget(job_id)

    def _forget(self, job_id: str) -> None:
        del self._jobs[job_id]
        self._ended.pop(job_id).set()  # wakes a /runsync or a worker waiting on it

    def _spawn_task(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
