"""Workers inside the endpoint's process, each running jobs with a JobRunner on a thread of its
own: for tests that script a worker. The real handler runs as worker subprocesses instead
(`workers.py`), through the worker-facing API.

Each job runs on a daemon thread, not a pool's: a timed-out or cancelled runner cannot be stopped,
so its thread must neither hold a worker slot nor keep the process from exiting.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from contextlib import suppress

from devtools.endpoint import jobs
from devtools.endpoint.engine import LocalEndpoint
from devtools.endpoint.jobs import Job
from devtools.endpoint.runner import JobRunner, ProgressSource, Stoppable

log = logging.getLogger(__name__)


class InProcessWorkers:
    """`count` workers taking jobs from `endpoint` and running them with `runner`."""

    def __init__(self, endpoint: LocalEndpoint, runner: JobRunner, count: int) -> None:
        self._endpoint = endpoint
        self._runner = runner
        self._count = count
        self._tasks: list[asyncio.Task[None]] = []
        if isinstance(runner, Stoppable):
            stoppable = runner
            endpoint.on_stop(lambda worker_id, job_id: stoppable.stop(job_id))
        if isinstance(runner, ProgressSource):
            endpoint.read_progress_with(runner.progress)

    def start(self) -> None:
        """Start the workers on the running loop."""
        loop = asyncio.get_running_loop()
        for number in range(1, self._count + 1):
            self._tasks.append(loop.create_task(self._work(f"local-worker-{number}")))

    async def stop(self) -> None:
        """Stop the workers; runner threads are left to end on their own."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _work(self, worker_id: str) -> None:
        while job := await self._endpoint.take(worker_id, None):  # None: the endpoint stops
            self._start_thread(job)
            await self._endpoint.wait_for_end(job.id, None)

    def _start_thread(self, job: Job) -> None:
        loop = asyncio.get_running_loop()

        def run() -> None:
            try:
                outcome = jobs.outcome_of_output(self._runner.run(job.id, job.request.input))
            except Exception as exc:
                log.exception("job %s: the runner raised", job.id)
                outcome = jobs.outcome_of_exception(exc)
            with suppress(RuntimeError):  # the loop is gone: the server stopped meanwhile
                loop.call_soon_threadsafe(self._endpoint.settle, job.id, outcome)

        threading.Thread(target=run, name=f"job-{job.id}", daemon=True).start()
