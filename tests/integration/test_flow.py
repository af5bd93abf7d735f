"""One job through the whole flow, against real PostgreSQL and local protocol servers
(the local RunPod endpoint with a scripted worker, the OpenRouter fake, local storage)."""

import asyncio
import base64
import io
import threading
import uuid

import httpx
import openai
import psycopg
import pytest
from PIL import Image

from orchestrator.claim import claim_jobs
from orchestrator.db import Database
from orchestrator.endpoint.config import EndpointConfig
from orchestrator.endpoint.server import EndpointServer
from orchestrator.flow import FlowDeps, run_job
from orchestrator.jobs import JobStatus
from orchestrator.openrouter import OpenRouterClient
from orchestrator.runpod import RunPodClient
from orchestrator.settings import KLEIN_TEMPLATE_ID, Settings
from orchestrator.storage import LocalStorage


def png_b64(size=(320, 240)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (40, 90, 200)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class ScriptedWorker:
    """A RunPod worker double: answers each job with `output`, counting calls."""

    def __init__(self, output=None, block: threading.Event | None = None):
        self.output = output or {
            "image": png_b64(),
            "seed": 1,
            "prompt_id": "p",
            "width": 320,
            "height": 240,
        }
        self.block = block
        self.inputs: list[dict] = []

    def run(self, job_id, job_input):
        self.inputs.append(job_input)
        if self.block is not None:
            self.block.wait(10)
        return dict(self.output)


def insert(url, input_data) -> tuple[str, str]:
    work_id, job_id, user_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO works (id, user_id, template_id, input_data) VALUES (%s, %s, %s, %s)",
            (work_id, user_id, KLEIN_TEMPLATE_ID, psycopg.types.json.Jsonb(input_data)),
        )
        conn.execute("INSERT INTO generation_jobs (id, work_id) VALUES (%s, %s)", (job_id, work_id))
    return str(job_id), str(work_id)


def rows(url, job_id):
    with psycopg.connect(url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT j.status AS job_status, j.attempts, j.finished_at, j.last_error, w.* "
            "FROM generation_jobs j JOIN works w ON w.id = j.work_id WHERE j.id = %s",
            (job_id,),
        )
        job = cur.fetchone()
        cur.execute("SELECT * FROM files WHERE id = %s", (job["output_file_id"],))
        return job, cur.fetchone()


async def drive(url, endpoint, openrouter_server, tmp_path, job_id, **settings_overrides):
    settings = Settings(
        database_url=url,
        runpod_api_base=endpoint.api_base,
        runpod_endpoint_id="local",
        worker_id="w1",
        poll_min_interval_s=0.05,
        poll_max_interval_s=0.2,
        **settings_overrides,
    )
    db = Database(url)
    await db.open()
    llm = openai.AsyncOpenAI(
        base_url=openrouter_server.base_url, api_key="sk-or-v1-test-key", max_retries=0
    )
    async with httpx.AsyncClient(timeout=10) as http, llm:
        deps = FlowDeps(
            db=db,
            runpod=RunPodClient(http, settings.runpod_api_base, "local", None),
            openrouter=OpenRouterClient(llm, translate_model="t", title_model="v"),
            storage=LocalStorage(tmp_path / "storage", "works", "http://127.0.0.1:8080"),
            settings=settings,
        )
        try:
            jobs = await claim_jobs(
                db, template_id=KLEIN_TEMPLATE_ID, worker_id="w1", lease_s=30, limit=5
            )
            [job] = [j for j in jobs if j.id == job_id]
            return await run_job(job, deps, asyncio.Event())
        finally:
            await db.close()


@pytest.fixture
def endpoint_for():
    servers = []

    def start(worker, **config):
        server = EndpointServer(EndpointConfig(endpoint_id="local", **config), worker)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_a_korean_job_completes_with_every_field_written(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    worker = ScriptedWorker()
    endpoint = endpoint_for(worker)
    job_id, work_id = insert(
        migrated_url, {"prompt": "배경을 해변으로 바꿔줘", "image_base64": png_b64(), "seed": 7}
    )
    status = asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
    assert status is JobStatus.COMPLETED
    job, file = rows(migrated_url, job_id)
    assert worker.inputs[0]["prompt"] == "EN: 배경을 해변으로 바꿔줘"
    assert worker.inputs[0]["seed"] == 7
    assert (job["job_status"], job["status"], job["attempts"]) == ("completed", "completed", 1)
    assert job["title"] == "해변의 노을 풍경"
    assert job["tags"] == ["I2I", "Image_to_Image", "AI생성"]
    assert job["completed_at"] is not None
    assert job["finished_at"] is not None
    path = f"{job['user_id']}/{work_id}/output.png"
    assert job["output_data_json"] == {
        "image_url": f"http://127.0.0.1:8080/storage/works/{path}",
        "filename": "output.png",
        "width": 320,
        "height": 240,
    }
    assert job["thumbnail_file_id"] == job["output_file_id"]
    meta = job["generation_metadata"]
    assert meta["translation"] == "llm"
    assert meta["original_prompt"] == "배경을 해변으로 바꿔줘"
    assert (meta["width"], meta["height"], meta["seed"], meta["model"]) == (
        320,
        240,
        7,
        "XiCON_KLEIN_I2I",
    )
    assert (file["bucket_id"], file["path"], file["width"], file["height"]) == (
        "works",
        path,
        320,
        240,
    )
    assert (tmp_path / "storage" / "works" / path).read_bytes()[:4] == b"\x89PNG"


def test_invalid_input_fails_the_work_without_any_runpod_call(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    worker = ScriptedWorker()
    endpoint = endpoint_for(worker)
    job_id, _ = insert(migrated_url, {"prompt": "edit prompt", "steps": 20})
    status = asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
    assert status is JobStatus.FAILED
    job, _ = rows(migrated_url, job_id)
    assert (job["job_status"], job["status"]) == ("failed", "failed")
    assert job["error_message"] == "Missing required parameter: image"
    assert job["failed_at"] is not None
    assert endpoint.endpoint.health()["jobs"]["completed"] + len(worker.inputs) == 0


def test_a_handler_error_fails_the_work_with_its_sentence(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    endpoint = endpoint_for(
        ScriptedWorker(output={"error": "Processing failed: SamplerCustomAdvanced: boom"})
    )
    job_id, _ = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})
    assert (
        asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
        is JobStatus.FAILED
    )
    job, _ = rows(migrated_url, job_id)
    assert job["error_message"] == "Processing failed: SamplerCustomAdvanced: boom"


def test_an_output_that_is_not_an_image_fails_without_resubmission(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    worker = ScriptedWorker(output={"image": base64.b64encode(b"nope").decode()})
    endpoint = endpoint_for(worker)
    job_id, _ = insert(migrated_url, {"prompt": "p", "image_base64": png_b64()})
    assert (
        asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
        is JobStatus.FAILED
    )
    job, _ = rows(migrated_url, job_id)
    assert job["error_message"] == "RunPod returned an invalid image"
    assert len(worker.inputs) == 1


def test_the_deadline_cancels_the_runpod_job_and_fails_the_work(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    release = threading.Event()
    endpoint = endpoint_for(ScriptedWorker(block=release))
    job_id, _ = insert(migrated_url, {"prompt": "p", "image_base64": png_b64()})
    try:
        status = asyncio.run(
            drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id, job_timeout_s=1)
        )
    finally:
        release.set()
    assert status is JobStatus.FAILED
    job, _ = rows(migrated_url, job_id)
    assert job["error_message"].startswith("Timed out")
    assert endpoint.endpoint.status(job["runpod_job_id"])["status"] == "CANCELLED"


def test_a_submitted_job_resumes_by_awaiting_not_resubmitting(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    worker = ScriptedWorker()
    endpoint = endpoint_for(worker)
    job_id, work_id = insert(migrated_url, {"prompt": "p", "image_base64": png_b64()})
    runpod_id = httpx.post(f"{endpoint.url}/run", json={"input": {"prompt": "p"}}).json()["id"]
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE generation_jobs SET runpod_job_id = %s, submitted_at = now(), attempts = 1 "
            "WHERE id = %s",
            (runpod_id, job_id),
        )
        conn.execute(
            "UPDATE works SET status = 'processing', runpod_job_id = %s WHERE id = %s",
            (runpod_id, work_id),
        )
    assert (
        asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
        is JobStatus.COMPLETED
    )
    job, _ = rows(migrated_url, job_id)
    assert len(worker.inputs) == 1
    assert job["attempts"] == 1


def test_a_job_runpod_forgot_is_submitted_again(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    worker = ScriptedWorker()
    endpoint = endpoint_for(worker)
    job_id, _ = insert(migrated_url, {"prompt": "p", "image_base64": png_b64()})
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE generation_jobs SET runpod_job_id = 'expired-id', submitted_at = now(), "
            "attempts = 1 WHERE id = %s",
            (job_id,),
        )
    assert (
        asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
        is JobStatus.COMPLETED
    )
    job, _ = rows(migrated_url, job_id)
    assert job["attempts"] == 2
    assert len(worker.inputs) == 1
