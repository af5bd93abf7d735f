"""Worker subprocesses: the container's own entry command (`python -m handler`) running the
runpod SDK's job loop against the endpoint's worker-facing API, as RunPod runs it.

Each worker is a process group of its own (the SDK forks a heartbeat process), dies with the
endpoint (PR_SET_PDEATHSIG on Linux), and prints into the endpoint's log as `[local-worker-K]`.
A worker that asks to be replaced (`refresh_worker`, sent as `stopPod`) is stopped and a new one
takes its place; one that dies is restarted after a pause that grows while it keeps dying.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import logging
import os
import signal
import sys
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field

from devtools.endpoint.engine import LocalEndpoint

log = logging.getLogger("devtools.endpoint.worker")

STOP_GRACE_S = 2.0  # SIGTERM, then SIGKILL for the whole group
STEADY_S = 60.0  # a worker that ran this long starts the pauses afresh when it dies
MAX_RESTART_DELAY_S = 30.0
PR_SET_PDEATHSIG = 1
HANDLER_COMMAND = (sys.executable, "-m", "handler")


@dataclass(frozen=True)
class WorkerLaunch:
    """What a worker is started with: the endpoint's URL (`.../v2/{id}`), its key, its command."""

    endpoint_url: str
    endpoint_id: str
    key: str = field(repr=False)
    command: tuple[str, ...] = HANDLER_COMMAND
    extra_env: Mapping[str, str] = field(default_factory=dict)


LOCAL_COMFY_STARTUP_TIMEOUT_S = "10"


def worker_env(base: Mapping[str, str], launch: WorkerLaunch, worker_id: str) -> dict[str, str]:
    """The environment RunPod gives a worker, pointed at this endpoint (docs/runpod.md)."""
    url = launch.endpoint_url
    defaults = {
        "RUNPOD_LOG_LEVEL": "WARN",  # the SDK logs each job's output at DEBUG
        # On RunPod, ComfyUI starts beside the worker and may take minutes; here it is already
        # running or it is not, and a first job should not wait 180 s to say so.
        "COMFY_STARTUP_TIMEOUT_S": LOCAL_COMFY_STARTUP_TIMEOUT_S,
    }
    return {
        **defaults,
        **base,
        **launch.extra_env,
        "RUNPOD_POD_ID": worker_id,
        "RUNPOD_ENDPOINT_ID": launch.endpoint_id,
        "RUNPOD_AI_API_KEY": launch.key,
        "RUNPOD_WEBHOOK_GET_JOB": f"{url}/job-take/$ID?gpu=local",
        "RUNPOD_WEBHOOK_POST_OUTPUT": f"{url}/job-done/$RUNPOD_POD_ID/$ID?gpu=local",
        "RUNPOD_WEBHOOK_POST_STREAM": f"{url}/job-stream/$RUNPOD_POD_ID/$ID?gpu=local",
        "RUNPOD_WEBHOOK_PING": f"{url}/ping/$RUNPOD_POD_ID?gpu=local",
        # The SDK's start-up checks reach the internet and benchmark the GPU.
        "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        "RUNPOD_SKIP_GPU_CHECK": "true",
        "PYTHONUNBUFFERED": "1",
    }


def restart_delay_s(deaths_in_a_row: int) -> float:
    """The pause before restarting a worker that died: 1 s, 2 s, 4 s ... up to 30 s."""
    return min(MAX_RESTART_DELAY_S, 2.0 ** max(0, deaths_in_a_row - 1))


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the endpoint's thread goes (Linux only)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(pid: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


class WorkerPool:
    """`count` worker subprocesses kept running for the endpoint's life."""

    def __init__(self, endpoint: LocalEndpoint, launch: WorkerLaunch, count: int) -> None:
        self._endpoint = endpoint
        self._launch = launch
        self._count = count
        self._numbers = itertools.count(1)
        self._running: dict[str, asyncio.subprocess.Process] = {}
        self._replaced: set[str] = set()
        self._slots: list[asyncio.Task[None]] = []
        self._stopping = False
        self._pumps: set[asyncio.Task[None]] = set()

    @property
    def pids(self) -> dict[str, int]:
        """The running workers' process ids (each its process group's id too)."""
        return {worker_id: proc.pid for worker_id, proc in self._running.items()}

    def start(self) -> None:
        """Start the workers on the running loop."""
        loop = asyncio.get_running_loop()
        self._slots = [loop.create_task(self._keep_one()) for _ in range(self._count)]

    def replace(self, worker_id: str) -> None:
        """Stop this worker (it asked to be replaced); a new one takes its place."""
        self._replaced.add(worker_id)
        proc = self._running.get(worker_id)
        if proc is not None:
            asyncio.get_running_loop().create_task(self._terminate(proc))

    async def stop(self) -> None:
        """Stop every worker and its children, bounded; no process is left behind. The SDK
        ends its job loop on SIGTERM once its long polls answer, which `close_polls` makes so."""
        self._stopping = True
        running = list(self._running.values())
        for proc in running:
            _signal_group(proc.pid, signal.SIGTERM)
        self._endpoint.close_polls()
        await asyncio.gather(*(self._terminate(proc) for proc in running))
        for task in self._slots:
            task.cancel()
        await asyncio.gather(*self._slots, return_exceptions=True)
        if self._pumps:  # the last lines of output
            await asyncio.wait(self._pumps, timeout=STOP_GRACE_S)
        for pump in self._pumps:
            pump.cancel()

    async def _keep_one(self) -> None:
        deaths = 0
        while True:
            worker_id = f"local-worker-{next(self._numbers)}"
            started = asyncio.get_running_loop().time()
            code = await self._run(worker_id)
            if self._stopping:
                return
            if worker_id in self._replaced:
                self._endpoint.worker_lost(worker_id, "the worker was replaced during the job")
                deaths = 0
                continue
            self._endpoint.worker_lost(
                worker_id, f"the worker running the job exited (exit status {code})"
            )
            steady = asyncio.get_running_loop().time() - started >= STEADY_S
            deaths = 1 if steady else deaths + 1
            delay = restart_delay_s(deaths)
            log.warning(
                "%s exited (status %s); a new worker starts in %g s", worker_id, code, delay
            )
            await asyncio.sleep(delay)

    async def _run(self, worker_id: str) -> int | None:
        proc = await asyncio.create_subprocess_exec(
            *self._launch.command,
            env=worker_env(os.environ, self._launch, worker_id),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # only prctl, before exec
        )
        self._running[worker_id] = proc
        log.info("%s started (pid %d)", worker_id, proc.pid)
        assert proc.stdout is not None
        # Apart from the exit: the SDK's heartbeat process holds the pipe open after it.
        pump = asyncio.get_running_loop().create_task(self._pump(worker_id, proc.stdout))
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)
        try:
            return await proc.wait()
        finally:
            _signal_group(proc.pid, signal.SIGKILL)  # the SDK's heartbeat process, if left
            if proc.returncode is not None:
                self._running.pop(worker_id, None)

    @staticmethod
    async def _pump(worker_id: str, output: asyncio.StreamReader) -> None:
        async for line in output:
            log.info("[%s] %s", worker_id, line.decode(errors="replace").rstrip())

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        _signal_group(proc.pid, signal.SIGTERM)
        with suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        _signal_group(proc.pid, signal.SIGKILL)
        with suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
