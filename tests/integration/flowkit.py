"""Driving one job through the flow against real PostgreSQL and the local protocol servers
(the local RunPod endpoint with a scripted worker, the OpenRouter fake, a storage backend).
Shared by test_flow.py and test_flow_faults.py."""

import base64
import io
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from PIL import Image

from devtools.endpoint.config import EndpointConfig
from devtools.endpoint.server import EndpointServer
from orchestrator.claim import claim_jobs
from orchestrator.db import Database
from orchestrator.deps import FlowDeps
from orchestrator.flow import run_job
from orchestrator.jobs import ClaimedJob, Outcome
from orchestrator.openrouter import OpenRouterClient, openrouter_sdk
from orchestrator.outputs import JobWake
from orchestrator.runpod import RunPodClient
from orchestrator.settings import KLEIN_TEMPLATE_ID, Settings
from orchestrator.storage import LocalStorage, Storage, SupabaseStorage, supabase_storage
from tests.fakes.openrouter import OpenRouterServer
from tests.fakes.storage import DEFAULT_SERVICE_KEY, StorageServer

LOCAL_PUBLIC_BASE = "http://127.0.0.1:8080"


def png_b64(size=(320, 240)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (40, 90, 200)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class ScriptedWorker:
    """A RunPod worker double: answers each job with `output`, counting calls."""

    def __init__(self, output=None, block: threading.Event | None = None):
        self.output = output or {
            "image": png_b64(),
            "prompt_id": "p",
            "width": 320,
            "height": 240,
        }
        self.block = block
        self.inputs: list[dict] = []
        self.job_ids: list[str] = []

    def run(self, job_id, job_input):
        self.inputs.append(job_input)
        self.job_ids.append(job_id)
        if self.block is not None:
            self.block.wait(10)
        # The real worker reports the seed it used, which is the one it was sent.
        return {"seed": job_input.get("seed", 1)} | dict(self.output)


def insert(url, input_data) -> tuple[str, str]:
    """A pending Klein job and its work, as the web app creates them: (job_id, work_id)."""
    work_id, job_id, user_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO works (id, user_id, template_id, input_data) VALUES (%s, %s, %s, %s)",
            (work_id, user_id, KLEIN_TEMPLATE_ID, psycopg.types.json.Jsonb(input_data)),
        )
        conn.execute("INSERT INTO generation_jobs (id, work_id) VALUES (%s, %s)", (job_id, work_id))
    return str(job_id), str(work_id)


def execute(url, statement, params=()) -> None:
    """One statement, committed."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params)


def rows(url, job_id):
    """(job joined with its work, the work's output files row or None)."""
    with psycopg.connect(url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT j.status AS job_status, j.attempts, j.retries, j.not_before, j.finished_at, "
            "j.last_error, j.locked_by, j.not_before > now() AS deferred, w.* "
            "FROM generation_jobs j JOIN works w ON w.id = j.work_id WHERE j.id = %s",
            (job_id,),
        )
        job = cur.fetchone()
        cur.execute("SELECT * FROM files WHERE id = %s", (job["output_file_id"],))
        return job, cur.fetchone()


def flow_settings(url, endpoint, **overrides) -> Settings:
    """Settings pointed at the local endpoint, polling fast."""
    values: dict[str, Any] = {
        "database_url": url,
        "runpod_api_base": endpoint.api_base,
        "runpod_endpoint_id": "local",
        "worker_id": "w1",
        "poll_min_interval_s": 0.05,
        "poll_max_interval_s": 0.2,
    }
    return Settings(**(values | overrides))


@asynccontextmanager
async def flow_deps(
    url,
    endpoint,
    openrouter_server: OpenRouterServer,
    tmp_path: Path,
    *,
    storage: Storage | None = None,
    **overrides,
) -> AsyncIterator[FlowDeps]:
    """FlowDeps on real clients (LocalStorage under tmp_path unless `storage` is given)."""
    settings = flow_settings(url, endpoint, **overrides)
    db = Database(url)
    await db.open()
    llm = openrouter_sdk(openrouter_server.base_url, openrouter_server.api_key)
    try:
        async with httpx.AsyncClient(timeout=10) as http, llm:
            yield FlowDeps(
                db=db,
                runpod=RunPodClient(http, settings.runpod_api_base, "local", None),
                openrouter=OpenRouterClient(llm, translate_model="t", title_model="v"),
                storage=storage or LocalStorage(tmp_path / "storage", "works", LOCAL_PUBLIC_BASE),
                settings=settings,
            )
    finally:
        await db.close()


@asynccontextmanager
async def supabase_on(storage_server: StorageServer) -> AsyncIterator[SupabaseStorage]:
    """Our SupabaseStorage client on the Supabase Storage fake (bucket `works`), closed after."""
    storage = supabase_storage(storage_server.url, DEFAULT_SERVICE_KEY, "works")
    try:
        yield storage
    finally:
        await storage.aclose()


async def claim(deps: FlowDeps, job_id: str) -> ClaimedJob:
    """Claim due jobs as deps' worker and return the one asked for."""
    jobs = await claim_jobs(
        deps.db,
        template_id=KLEIN_TEMPLATE_ID,
        worker_id=deps.settings.worker_id,
        lease_s=30,
        limit=5,
    )
    [job] = [j for j in jobs if j.id == job_id]
    return job


async def drive(url, endpoint, openrouter_server, tmp_path, job_id, **options) -> Outcome:
    """Claim the job and run it through the whole flow once."""
    async with flow_deps(url, endpoint, openrouter_server, tmp_path, **options) as deps:
        return await run_job(await claim(deps, job_id), deps, JobWake())


@pytest.fixture
def endpoint_for():
    """`endpoint_for(worker, **config)`: a started local RunPod endpoint, stopped afterwards."""
    servers = []

    def start(worker, **config):
        server = EndpointServer(EndpointConfig(endpoint_id="local", **config), worker)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
