"""The whole pipeline on one machine, as an operator runs it: `klein endpoint` as a process running
the project's real handler against a ComfyUI (the protocol server, or a real one), `klein serve`
in front of it, the OpenRouter test server, and a web host for reference images. Shared by
test_full_stack.py; the fixtures are in conftest.py."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from devtools.background_server import BackgroundServer
from tests.e2e.servekit import (
    READY_TIMEOUT_S,
    KleinServe,
    ServiceProcess,
    base_env,
    free_port,
    supabase_webhook,
)

# Read once, when pytest starts: a real ComfyUI to run one more test against.
REAL_COMFY_URL = os.environ.get("COMFY_API_URL")
ENDPOINT_ID = "local"
ENDPOINT_WORKERS = 2
# A handler thread stalled on ComfyUI gives up after this long, so none outlives a test by much.
HANDLER_JOB_TIMEOUT_S = 15
HANDLER_ENV = {
    "COMFY_STARTUP_TIMEOUT_S": "5",
    "COMFY_JOB_TIMEOUT_S": str(HANDLER_JOB_TIMEOUT_S),
    # The reference images of these tests are served from 127.0.0.1.
    "ALLOW_PRIVATE_IMAGE_URLS": "true",
    "IMAGE_FETCH_TIMEOUT_S": "5",
}


class KleinEndpoint(ServiceProcess):
    """One `python -m orchestrator endpoint` process on a free port, running the real handler."""

    def __init__(self, env: dict[str, str], log_path: Path, *extra_args: str) -> None:
        self.port = free_port()
        self.api_base = f"http://127.0.0.1:{self.port}/v2"
        self.url = f"{self.api_base}/{ENDPOINT_ID}"
        args = ["endpoint", "--port", str(self.port), "--endpoint-id", ENDPOINT_ID]
        args += ["--workers", str(ENDPOINT_WORKERS), *extra_args]
        super().__init__("klein endpoint", args, env, log_path)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll RunPod's GET /health until it answers 200."""
        self.wait_answering(f"{self.url}/health", timeout_s)

    def status(self, runpod_job_id: str) -> dict[str, Any]:
        """RunPod's /status body for the job."""
        answer = httpx.get(f"{self.url}/status/{runpod_job_id}", timeout=5)
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        return body

    def health(self) -> dict[str, Any]:
        """RunPod's /health body: jobs by state since start, and the workers."""
        answer = httpx.get(f"{self.url}/health", timeout=5)
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        return body


def endpoint_env(comfy_url: str, comfy_root: Path | None, **overrides: str) -> dict[str, str]:
    """The endpoint's environment: this ComfyUI, short handler deadlines, nothing of the host's."""
    env = base_env() | HANDLER_ENV | {"COMFY_API_URL": comfy_url}
    if comfy_root is not None:
        env["COMFY_ROOT"] = str(comfy_root)
    return env | overrides


@dataclass(frozen=True)
class Stack:
    """A started pipeline: the database, `klein serve`, `klein endpoint` and the storage folder."""

    database_url: str
    klein: KleinServe
    endpoint: KleinEndpoint
    storage_dir: Path

    def post_webhook(self, job_id: str) -> httpx.Response:
        """Supabase's Database Webhook for a new generation_jobs row."""
        return httpx.post(
            f"{self.klein.base_url}/webhook/klein_i2i", json=supabase_webhook(job_id), timeout=5
        )


class ImageHost(BackgroundServer):
    """A web server for reference images: `files` by name, 404 for any other; records the names
    asked for."""

    thread_name = "image-host"

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.requested: list[str] = []

    def url_of(self, name: str) -> str:
        """Where `name` is (or would be) served."""
        return f"{self.url}/{name}"

    def _routes(self) -> list[web.RouteDef]:
        return [web.get("/{name}", self._get)]

    async def _get(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.requested.append(name)
        if name not in self.files:
            return web.Response(status=404, text="404: Not Found")
        return web.Response(body=self.files[name], content_type="image/png")
