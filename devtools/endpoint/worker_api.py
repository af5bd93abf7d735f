"""RunPod's worker-facing API under `/v2/{endpoint_id}`, as the runpod SDK (1.12) calls it.

`GET /job-take/{worker}` and `GET /job-take-batch/{worker}?batch_size=N` (long polls; a job, a
list of jobs, or 204), `GET /job-stop/{worker}` (long poll; `{"jobsToStop": [...]}` or 204),
`POST /job-done/{worker}/{job}` (the result, or `{"status": "IN_PROGRESS", "output": ...}` from
progress_update), `POST /job-stream/{worker}/{job}` and `GET /ping/{worker}`. Every route needs
the endpoint's worker key in `Authorization` (the SDK sends RUNPOD_AI_API_KEY bare). The shapes and
the SDK files they come from are in docs/runpod.md, "The worker-facing API".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response

from devtools.endpoint import jobs
from devtools.endpoint.config import EndpointConfig
from devtools.endpoint.engine import LocalEndpoint

log = logging.getLogger(__name__)

Replace = Callable[[str], None]  # a worker asked to be replaced (stopPod)
UNAUTHORIZED_WORKER = (
    "a worker sent the wrong key; the runpod SDK sends the api_key of ~/.runpod/config.toml "
    "instead of RUNPOD_AI_API_KEY when that file exists: move it aside while using the local "
    "endpoint"
)


class WorkerApiError(Exception):
    """Answer this status with `{"error": message}`."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def job_for_worker(job: jobs.Job) -> dict[str, Any]:
    """A taken job as job-take answers it: the id and the input (rp_job.get_job needs both)."""
    return {"id": job.id, "input": job.request.input}


async def read_capped(request: Request, limit: int) -> bytes | int:
    """The body, or its size so far once it passes `limit` (the rest is not kept)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return int(declared)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return size
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WorkerApiError(400, "the result must be JSON") from exc


def worker_router(
    config: EndpointConfig, endpoint: LocalEndpoint, authorized: Callable[[str | None], bool]
) -> tuple[APIRouter, list[Replace]]:
    """The routes, and the list of hooks called when a worker asks to be replaced."""
    router = APIRouter(prefix="/v2/{endpoint_id}")
    replace_hooks: list[Replace] = []

    def check(endpoint_id: str, authorization: Annotated[str | None, Header()] = None) -> None:
        if not authorized(authorization):
            log.warning(UNAUTHORIZED_WORKER)
            raise WorkerApiError(401, "Unauthorized: a worker sends the endpoint's worker key")
        if endpoint_id != config.endpoint_id:
            raise WorkerApiError(404, f"endpoint {endpoint_id!r} not found")

    gate = [Depends(check)]

    @router.get("/job-take/{worker_id}", dependencies=gate)
    async def job_take(worker_id: str) -> Any:
        job = await endpoint.take(worker_id, config.worker_poll_s)
        return Response(status_code=204) if job is None else job_for_worker(job)

    @router.get("/job-take-batch/{worker_id}", dependencies=gate)
    async def job_take_batch(worker_id: str, batch_size: int = 1) -> Any:
        job = await endpoint.take(worker_id, config.worker_poll_s)
        if job is None:
            return Response(status_code=204)
        taken = [job]
        while len(taken) < batch_size and (more := await endpoint.take(worker_id, 0)):
            taken.append(more)
        return [job_for_worker(j) for j in taken]

    @router.get("/job-stop/{worker_id}", dependencies=gate)
    async def job_stop(worker_id: str) -> Any:
        stop = await endpoint.stop_signals(worker_id, config.worker_poll_s)
        return {"jobsToStop": stop} if stop else Response(status_code=204)

    @router.post("/job-done/{worker_id}/{job_id}", dependencies=gate)
    async def job_done(worker_id: str, job_id: str, request: Request) -> dict[str, Any]:
        raw = await read_capped(request, config.max_result_bytes)
        if isinstance(raw, int):
            outcome = jobs.oversized_result(raw, config.max_result_bytes)
            log.error("job %s: %s", job_id, outcome.error)
            endpoint.settle(job_id, outcome)
            raise WorkerApiError(413, outcome.error or "the result is too large")
        body = _parse(raw)
        endpoint.report(worker_id, job_id, body)
        if jobs.wants_new_worker(body):
            log.info("%s asked to be replaced (refresh_worker)", worker_id)
            endpoint.retire(worker_id)
            for hook in replace_hooks:
                hook(worker_id)
        return {}

    @router.post("/job-stream/{worker_id}/{job_id}", dependencies=gate)
    async def job_stream(worker_id: str, job_id: str, request: Request) -> dict[str, Any]:
        raw = await read_capped(request, config.max_result_bytes)
        if isinstance(raw, int):
            raise WorkerApiError(413, "a streamed part is over RunPod's result size limit")
        endpoint.stream(worker_id, job_id, _parse(raw))
        return {}

    @router.get("/ping/{worker_id}", dependencies=gate)
    async def ping(worker_id: str) -> dict[str, Any]:
        endpoint.pinged(worker_id)
        return {}

    return router, replace_hooks
