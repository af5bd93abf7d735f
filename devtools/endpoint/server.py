"""Running the local endpoint: in the foreground (`serve`) or on a background thread."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from devtools.endpoint.app import Workers, create_app
from devtools.endpoint.config import EndpointConfig
from devtools.endpoint.engine import LocalEndpoint
from devtools.endpoint.runner import JobRunner
from devtools.endpoint.workers import WorkerLaunch

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 10.0
STARTUP_POLL_S = 0.01
SHUTDOWN_TIMEOUT_S = 10.0
# A /runsync may be waiting for minutes; shutting down must not wait for it.
GRACEFUL_SHUTDOWN_S = 2


def bind(host: str, port: int) -> socket.socket:
    """A listening address for the server (port 0: a free one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def launch_workers(
    app: FastAPI, config: EndpointConfig, api_base: str, env: Mapping[str, str] | None = None
) -> None:
    """Have the app start worker subprocesses pointed at `api_base` (when it has no runner)."""
    workers: Workers = app.state.workers
    workers.launch = WorkerLaunch(
        endpoint_url=f"{api_base}/{config.endpoint_id}",
        endpoint_id=config.endpoint_id,
        key=config.worker_key,
        extra_env=dict(env or {}),
    )


class _Server(uvicorn.Server):
    """uvicorn, stopping the workers before it waits for open connections: their long polls
    would hold it for the whole grace period and end in tracebacks."""

    def __init__(self, app: FastAPI, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        workers: Workers = self._app.state.workers
        await workers.stop()
        self._app.state.endpoint.close_polls()
        await super().shutdown(sockets)


def serve(config: EndpointConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the endpoint with worker subprocesses until interrupted; clients use
    `http://{host}:{port}/v2` as API base."""
    log.warning("local RunPod endpoint: a development tool, not for production")
    sock = bind(host, port)
    app = create_app(config)
    launch_workers(app, config, f"http://{host}:{sock.getsockname()[1]}/v2")
    server = _Server(
        app,
        uvicorn.Config(
            app,
            ws="none",
            access_log=False,  # a line for every /status poll drowns the jobs' own lines
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        ),
    )
    server.run(sockets=[sock])


class EndpointServer:
    """The endpoint on a background thread, on `port` (0: a free one); a context manager.
    Without a `runner`, jobs run on worker subprocesses (`python -m handler`; `worker_env` is
    added to their environment)."""

    def __init__(
        self,
        config: EndpointConfig,
        runner: JobRunner | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Callable[[], float] = time.monotonic,
        worker_env: Mapping[str, str] | None = None,
        start_workers: bool = True,
    ) -> None:
        self.config = config
        # False: no worker processes; whoever holds the worker key plays them (tests).
        self._start_workers = runner is None and start_workers
        self._worker_env = worker_env
        self.app = create_app(config, runner, clock=clock)
        self._host, self._port = host, port
        self._server = _Server(
            self.app,
            uvicorn.Config(
                self.app,
                ws="none",
                log_level="warning",
                lifespan="on",
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            ),
        )
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> LocalEndpoint:
        """The job table and its development hook (`inject`)."""
        endpoint: LocalEndpoint = self.app.state.endpoint
        return endpoint

    @property
    def worker_pids(self) -> dict[str, int]:
        """The worker subprocesses running now, by worker id."""
        workers: Workers = self.app.state.workers
        return {} if workers.pool is None else workers.pool.pids

    @property
    def api_base(self) -> str:
        """What `RUNPOD_API_BASE` should be: `http://host:port/v2`."""
        return f"http://{self._host}:{self._port}/v2"

    @property
    def url(self) -> str:
        """This endpoint's own base: `{api_base}/{endpoint_id}`."""
        return f"{self.api_base}/{self.config.endpoint_id}"

    def start(self) -> None:
        """Bind, start serving, and return once the server answers (or raise RuntimeError)."""
        sock = bind(self._host, self._port)
        self._port = sock.getsockname()[1]
        if self._start_workers:
            launch_workers(self.app, self.config, self.api_base, self._worker_env)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="local-endpoint", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the local endpoint did not start on {self.api_base}")
            time.sleep(STARTUP_POLL_S)

    def stop(self) -> None:
        """Stop serving and wait for the server thread (bounded)."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(SHUTDOWN_TIMEOUT_S)

    def __enter__(self) -> EndpointServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
