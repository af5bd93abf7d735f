"""The endpoint's state: the job table, the FIFO queue, the stop signals and webhook delivery.

Everything here runs on the server's event loop, so the table needs no lock. Workers take jobs
with `take` (a long poll): the worker subprocesses through the worker-facing API (`worker_api.py`),
or, for tests, in-process JobRunners (`inprocess.py`). A running job that is cancelled or passes
its execution timeout ends at once; its worker hears it through `stop_signals`.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from contextlib import suppress
from typing import Any

import httpx

from devtools.endpoint import jobs
from devtools.endpoint.config import EndpointConfig
from devtools.endpoint.jobs import Job, JobRequest, Outcome, RunPodStatus
from devtools.endpoint.limits import Injections
from devtools.endpoint.waiters import Waiters
from devtools.endpoint.webhook import deliver_webhook

log = logging.getLogger(__name__)

StopHook = Callable[[str, str], None]  # (worker id, job id): stop that job now
ProgressReader = Callable[[str], Any]  # job id -> its latest progress, or None


class LocalEndpoint:
    """Jobs submitted, queued, taken by workers, reported and forgotten."""

    def __init__(self, config: EndpointConfig, clock: Callable[[], float]) -> None:
        self._config = config
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self._progress: dict[str, Any] = {}
        self._expiry: list[tuple[float, str]] = []  # a heap; entries may be stale
        self._queue: deque[str] = deque()
        self._queued = Waiters()
        self._stops: dict[str, list[str]] = {}
        self._stop_waiters: dict[str, Waiters] = {}
        self._stop_hooks: list[StopHook] = []
        self._progress_readers: list[ProgressReader] = []
        self._streams: dict[str, list[Any]] = {}
        self._retired: set[str] = set()
        self._closing = False
        self.last_ping: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ended_counts: Counter[RunPodStatus] = Counter()
        self._http: httpx.AsyncClient | None = None
        self.injections = Injections()

    def inject(self, status_code: int = 429, times: int = 1, route: str = "status") -> None:
        """A development hook: the next `times` requests to `route` answer `status_code`, to
        play RunPod's rate limits and outages on purpose."""
        self.injections.add(status_code, times, route)

    def on_stop(self, hook: StopHook) -> None:
        """Also call `hook(worker_id, job_id)` when a running job must stop (in-process runners)."""
        self._stop_hooks.append(hook)

    def read_progress_with(self, reader: ProgressReader) -> None:
        """Also ask `reader(job_id)` for a running job's progress (in-process runners)."""
        self._progress_readers.append(reader)

    async def start(self) -> None:
        """Open the webhook client."""
        self._http = httpx.AsyncClient(timeout=self._config.webhook_timeout_s)

    def close_polls(self) -> None:
        """Answer every long poll now, and later ones at once (the server is stopping)."""
        self._closing = True
        self._queued.wake_all()
        for waiters in self._stop_waiters.values():
            waiters.wake_all()

    async def stop(self) -> None:
        """Stop pending webhooks and deadline watches; answer every long poll."""
        self.close_polls()
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
        self._queue.append(job.id)
        self._queued.wake_one()
        heapq.heappush(self._expiry, (jobs.forget_at(job), job.id))
        return job

    def status(self, job_id: str) -> dict[str, Any] | None:
        """The /status body, or None for an unknown or forgotten job."""
        self._sweep()
        job = self._jobs.get(job_id)
        return None if job is None else self._body(job)

    def job(self, job_id: str) -> Job | None:
        """The job as the table holds it now."""
        return self._jobs.get(job_id)

    async def wait_for_end(self, job_id: str, timeout_s: float | None) -> None:
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
            self._end(job, Outcome(RunPodStatus.CANCELLED))
            log.info("job %s cancelled", job_id)
            self._signal_stop(job)
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
        running = live[RunPodStatus.IN_PROGRESS]
        return {
            "jobs": {
                "completed": self._ended_counts[RunPodStatus.COMPLETED],
                "failed": failed,
                "inProgress": running,
                "inQueue": live[RunPodStatus.IN_QUEUE],
                "retried": 0,
            },
            "workers": {"idle": max(0, self._config.workers - running), "running": running},
        }

    # ---- what workers call

    async def take(self, worker_id: str, hold_s: float | None) -> Job | None:
        """The next queued job, now IN_PROGRESS on `worker_id`; None if none came in `hold_s`."""
        deadline = None if hold_s is None else asyncio.get_running_loop().time() + hold_s
        if worker_id in self._retired:  # held, not refused: the SDK would ask again at once
            await asyncio.sleep(hold_s or 0)
            return None
        while not self._closing:
            job = self._take_next(worker_id)
            if job is not None:
                return job
            left = None if deadline is None else deadline - asyncio.get_running_loop().time()
            if left is not None and left <= 0:
                return None
            await self._queued.wait(left)
        return None

    async def stop_signals(self, worker_id: str, hold_s: float) -> list[str]:
        """The ids of jobs `worker_id` must stop, waiting up to `hold_s` for one."""
        if not self._stops.get(worker_id) and not self._closing:
            await self._stop_waiters.setdefault(worker_id, Waiters()).wait(hold_s)
        return self._stops.pop(worker_id, [])

    def report(self, worker_id: str, job_id: str, body: object) -> None:
        """A worker's job-done post: progress while running, else the job's end."""
        job = self._jobs.get(job_id)
        if job is None or job.status is not RunPodStatus.IN_PROGRESS or job.worker_id != worker_id:
            log.info("job %s: a late result from %s is discarded", job_id, worker_id)
            return
        result = jobs.read_result(body)
        if isinstance(result, jobs.Progress):
            self._progress[job_id] = result.output
        else:
            self.settle(job_id, result)

    def settle(self, job_id: str, outcome: Outcome) -> None:
        """End a running job with `outcome` (a late one, after cancel or timeout, is dropped)."""
        job = self._jobs.get(job_id)
        if job is None or job.status is not RunPodStatus.IN_PROGRESS:
            return  # cancelled, timed out or forgotten meanwhile: the result is discarded
        self._end(job, outcome)
        log.info("job %s %s", job_id, outcome.status.value)

    def retire(self, worker_id: str) -> None:
        """Give `worker_id` no more jobs (it asked to be replaced)."""
        self._retired.add(worker_id)

    def pinged(self, worker_id: str) -> None:
        """Note a worker's heartbeat."""
        self.last_ping[worker_id] = self._clock()

    def stream(self, worker_id: str, job_id: str, body: object) -> None:
        """Keep a streamed part of a running job for /stream."""
        job = self._jobs.get(job_id)
        if job is not None and job.worker_id == worker_id and isinstance(body, dict):
            self._streams.setdefault(job_id, []).append({"output": body.get("output")})

    def take_stream(self, job_id: str) -> dict[str, Any] | None:
        """RunPod's /stream body: the status and the parts not read before."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        return {"status": job.status.value, "stream": self._streams.pop(job_id, [])}

    def worker_lost(self, worker_id: str, why: str) -> None:
        """A worker is gone: its running jobs fail with `why`, its signals are dropped."""
        for job in list(self._jobs.values()):
            if job.worker_id == worker_id and job.status is RunPodStatus.IN_PROGRESS:
                self.settle(job.id, Outcome(RunPodStatus.FAILED, error=why))
        self._stops.pop(worker_id, None)

    # ---- inside

    def _body(self, job: Job) -> dict[str, Any]:
        progress = self._progress.get(job.id)
        if job.status is RunPodStatus.IN_PROGRESS:
            for reader in self._progress_readers:
                progress = reader(job.id) or progress
        return jobs.status_body(job, progress)

    def _take_next(self, worker_id: str) -> Job | None:
        self._sweep()
        while self._queue:
            job = self._jobs.get(self._queue.popleft())
            if job is None or job.status is not RunPodStatus.IN_QUEUE:
                continue  # cancelled, purged or past its TTL while queued
            job = jobs.started(job, self._clock(), worker_id)
            self._jobs[job.id] = job
            self._spawn_task(self._watch_deadline(job))
            return job
        return None

    async def _watch_deadline(self, job: Job) -> None:
        deadline_s = jobs.run_deadline_s(job, self._clock())
        try:
            await asyncio.wait_for(self._ended[job.id].wait(), deadline_s)
        except TimeoutError:
            self._on_deadline(job.id)

    def _on_deadline(self, job_id: str) -> None:
        self._sweep()  # past its TTL: forgotten, not timed out
        job = self._jobs.get(job_id)
        if job is not None and job.status is RunPodStatus.IN_PROGRESS:
            self._end(job, Outcome(RunPodStatus.TIMED_OUT))
            log.warning("job %s timed out after %g s", job_id, job.request.execution_timeout_s)
            self._signal_stop(job)

    def _signal_stop(self, job: Job) -> None:
        """Tell the worker holding a job that was running to stop it (RunPod's job-stop)."""
        if job.worker_id is None:
            return
        self._stops.setdefault(job.worker_id, []).append(job.id)
        self._stop_waiters.setdefault(job.worker_id, Waiters()).wake_all()
        for hook in self._stop_hooks:
            hook(job.worker_id, job.id)

    def _end(self, job: Job, outcome: Outcome) -> None:
        job = jobs.finished(job, outcome, self._clock())
        self._jobs[job.id] = job
        self._progress.pop(job.id, None)
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
        self._progress.pop(job_id, None)
        self._streams.pop(job_id, None)
        self._ended.pop(job_id).set()  # wakes a /runsync or a deadline watch waiting on it

    def _spawn_task(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
