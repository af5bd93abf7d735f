"""RunPod Serverless's REST API under `/v2/{endpoint_id}`, served locally for development: the
client API (below) and the worker-facing API (`worker_api.py`) that worker subprocesses
(`workers.py`) take jobs from. Tests may run in-process JobRunners instead (`inprocess.py`).

Every client route checks, in order: the API key (when one is configured), failures scripted through
`inject` (a development hook), the endpoint id, and the route's rate limit. Error bodies are
`{"error": "<sentence>"}`.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse

from devtools.endpoint.config import EndpointConfig
from devtools.endpoint.engine import LocalEndpoint
from devtools.endpoint.inprocess import InProcessWorkers
from devtools.endpoint.jobs import BadRequest, JobRequest, parse_request
from devtools.endpoint.limits import Injections, TokenBucket
from devtools.endpoint.runner import JobRunner
from devtools.endpoint.worker_api import WorkerApiError, worker_router
from devtools.endpoint.workers import WorkerLaunch, WorkerPool

RATE_WINDOW_S = 10.0
RUNSYNC_WAIT_MS = (1_000, 300_000)  # RunPod's range for `/runsync?wait=`


class ApiError(Exception):
    """Answer this status with `{"error": message}`."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def authorized(header: str | None, api_key: str) -> bool:
    """`Bearer <key>` or the bare key (RunPod takes both), compared in constant time."""
    if not header:
        return False
    scheme, _, credentials = header.strip().partition(" ")
    presented = credentials.strip() if scheme.lower() == "bearer" else header.strip()
    return hmac.compare_digest(presented.encode(), api_key.encode())


def runsync_wait_s(wait_ms: int | None, default_s: float) -> float:
    """How long /runsync waits: `?wait=` clamped to RunPod's range, else the configured default."""
    if wait_ms is None:
        return default_s
    low, high = RUNSYNC_WAIT_MS
    return min(max(wait_ms, low), high) / 1000


class Gate:
    """The checks every request passes before its route runs."""

    def __init__(
        self, config: EndpointConfig, injections: Injections, clock: Callable[[], float]
    ) -> None:
        self._config = config
        self._injections = injections
        limits = {"run": config.run_limit_per_10s, "status": config.status_limit_per_10s}
        self._buckets = {
            route: TokenBucket(limit, RATE_WINDOW_S, clock)
            for route, limit in limits.items()
            if limit is not None
        }

    def check(self, route: str, endpoint_id: str, authorization: str | None) -> None:
        """Raise ApiError unless this request may go on to `route`."""
        api_key = self._config.api_key
        if api_key is not None and not authorized(authorization, api_key):
            raise ApiError(401, "Unauthorized: send 'Authorization: Bearer <api key>'")
        injected = self._injections.take(route)
        if injected is not None:
            raise ApiError(injected, f"injected {injected} (development hook)")
        if endpoint_id != self._config.endpoint_id:
            raise ApiError(404, f"endpoint {endpoint_id!r} not found")
        bucket = self._buckets.get(route)
        if bucket is not None and not bucket.take():
            raise ApiError(429, f"rate limit exceeded for /{route}")

    def depends(self, route: str) -> Any:
        """A FastAPI dependency running `check` for `route`."""

        def check(endpoint_id: str, authorization: Annotated[str | None, Header()] = None) -> None:
            self.check(route, endpoint_id, authorization)

        return Depends(check)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError | WorkerApiError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return JSONResponse({"error": exc.message}, status_code=exc.status_code, headers=headers)


async def _job_request(request: Request, config: EndpointConfig, max_bytes: int) -> JobRequest:
    raw = await request.body()
    if len(raw) > max_bytes:
        raise ApiError(413, f"request body of {len(raw)} bytes is over the {max_bytes} limit")
    try:
        body = json.loads(raw, parse_constant=_not_json)
        # What the worker is handed must serialise again: no lone surrogate (a "\ud800" escape
        # failed at job-take, and the job waited out its execution timeout).
        json.dumps(body, ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeError included
        raise ApiError(400, "the request body must be JSON") from exc
    try:
        return parse_request(body, config.execution_timeout_ms, config.ttl_ms)
    except BadRequest as exc:
        raise ApiError(400, str(exc)) from exc


def _not_json(constant: str) -> None:
    """NaN, Infinity and -Infinity: Python's json reads them, JSON has no such numbers."""
    raise ValueError(f"{constant} is not JSON")


def _found(body: dict[str, Any] | None) -> dict[str, Any]:
    if body is None:
        raise ApiError(404, "job not found (unknown, or its result has expired)")
    return body


def _router(config: EndpointConfig, endpoint: LocalEndpoint, gate: Gate) -> APIRouter:
    router = APIRouter(prefix="/v2/{endpoint_id}")

    @router.post("/run", dependencies=[gate.depends("run")])
    async def run(request: Request) -> dict[str, Any]:
        job = endpoint.submit(await _job_request(request, config, config.max_run_bytes))
        return {"id": job.id, "status": job.status.value}

    @router.post("/runsync", dependencies=[gate.depends("runsync")])
    async def runsync(request: Request, wait: int | None = None) -> dict[str, Any]:
        job_request = await _job_request(request, config, config.max_runsync_bytes)
        job = endpoint.submit(job_request, sync=True)
        await endpoint.wait_for_end(job.id, runsync_wait_s(wait, config.sync_wait_s))
        return _found(endpoint.status(job.id))

    @router.api_route(
        "/status/{job_id}", methods=["GET", "POST"], dependencies=[gate.depends("status")]
    )
    async def status(job_id: str) -> dict[str, Any]:
        return _found(endpoint.status(job_id))

    @router.get("/stream/{job_id}", dependencies=[gate.depends("stream")])
    async def stream(job_id: str) -> dict[str, Any]:
        return _found(endpoint.take_stream(job_id))

    @router.post("/cancel/{job_id}", dependencies=[gate.depends("cancel")])
    async def cancel(job_id: str) -> dict[str, Any]:
        return _found(endpoint.cancel(job_id))

    @router.get("/health", dependencies=[gate.depends("health")])
    async def health() -> dict[str, Any]:
        return endpoint.health()

    @router.post("/purge-queue", dependencies=[gate.depends("purge-queue")])
    async def purge_queue() -> dict[str, Any]:
        return {"removed": endpoint.purge_queue(), "status": "completed"}

    return router


class Workers:
    """Who runs the jobs: in-process JobRunners (tests), or worker subprocesses started once the
    server's address is known (`app.state.workers.launch` is set before the server starts)."""

    def __init__(self, config: EndpointConfig, endpoint: LocalEndpoint, runner: JobRunner | None):
        self._config = config
        self._endpoint = endpoint
        self._in_process = (
            None if runner is None else InProcessWorkers(endpoint, runner, config.workers)
        )
        self.launch: WorkerLaunch | None = None
        self.pool: WorkerPool | None = None
        self._stopped = False

    def start(self) -> None:
        if self._in_process is not None:
            self._in_process.start()
        elif self.launch is not None:
            self.pool = WorkerPool(self._endpoint, self.launch, self._config.workers)
            self.pool.start()

    def replace(self, worker_id: str) -> None:
        if self.pool is not None:
            self.pool.replace(worker_id)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._in_process is not None:
            await self._in_process.stop()
        if self.pool is not None:
            await self.pool.stop()


def create_app(
    config: EndpointConfig,
    runner: JobRunner | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The local endpoint as an ASGI app; `app.state.endpoint` is its LocalEndpoint and
    `app.state.workers` who runs its jobs (`runner` in-process, else worker subprocesses)."""
    endpoint = LocalEndpoint(config, clock)
    workers = Workers(config, endpoint, runner)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await endpoint.start()
        workers.start()
        try:
            yield
        finally:
            await workers.stop()
            await endpoint.stop()

    app = FastAPI(
        title="Local RunPod Serverless endpoint (development tool, not for production)",
        lifespan=lifespan,
    )
    app.state.endpoint = endpoint
    app.state.workers = workers
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(WorkerApiError, _api_error)
    app.include_router(_router(config, endpoint, Gate(config, endpoint.injections, clock)))
    router, replace_hooks = worker_router(
        config, endpoint, lambda header: authorized(header, config.worker_key)
    )
    replace_hooks.append(workers.replace)
    app.include_router(router)
    return app
