"""One job through the whole flow, against real PostgreSQL and local protocol servers
(the local RunPod endpoint with a scripted worker, the OpenRouter fake, local storage)."""

import asyncio
import base64
import threading

import httpx
import psycopg

from orchestrator.jobs import Outcome
from tests.integration.flowkit import ScriptedWorker, drive, insert, png_b64, rows


def test_a_korean_job_completes_with_every_field_written(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    worker = ScriptedWorker()
    endpoint = endpoint_for(worker)
    job_id, work_id = insert(
        migrated_url, {"prompt": "배경을 해변으로 바꿔줘", "image_base64": png_b64(), "seed": 7}
    )
    status = asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
    assert status is Outcome.COMPLETED
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
    assert status is Outcome.FAILED
    job, _ = rows(migrated_url, job_id)
    assert (job["job_status"], job["status"]) == ("failed", "failed")
    assert job["error_message"] == "Missing required parameter: image"
    assert job["failed_at"] is not None
    assert endpoint.endpoint.health()["jobs"]["completed"] + len(worker.inputs) == 0


def test_an_inline_image_too_large_for_runpod_fails_before_any_runpod_call(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    worker = ScriptedWorker()
    endpoint = endpoint_for(worker)
    too_large = "A" * 10_000_000  # valid base64 characters; the /run body would pass 10 MB
    job_id, _ = insert(migrated_url, {"prompt": "make it red", "image_base64": too_large})
    status = asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
    assert status is Outcome.FAILED
    job, _ = rows(migrated_url, job_id)
    assert job["error_message"].startswith(
        "Invalid parameter: image_base64 is too large to send through RunPod"
    )
    assert "send a smaller image or an image_url" in job["error_message"]
    assert sum(endpoint.endpoint.health()["jobs"].values()) + len(worker.inputs) == 0


def test_a_handler_error_fails_the_work_with_its_sentence(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    endpoint = endpoint_for(
        ScriptedWorker(output={"error": "Processing failed: SamplerCustomAdvanced: boom"})
    )
    job_id, _ = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})
    assert (
        asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
        is Outcome.FAILED
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
        is Outcome.FAILED
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
    assert status is Outcome.FAILED
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
        is Outcome.COMPLETED
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
        is Outcome.COMPLETED
    )
    job, _ = rows(migrated_url, job_id)
    assert job["attempts"] == 2
    assert len(worker.inputs) == 1


def test_runpod_timing_the_job_out_fails_the_work(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    release = threading.Event()
    endpoint = endpoint_for(ScriptedWorker(block=release), execution_timeout_ms=300)
    job_id, _ = insert(migrated_url, {"prompt": "p", "image_base64": png_b64()})
    try:
        status = asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
    finally:
        release.set()
    assert status is Outcome.FAILED
    job, _ = rows(migrated_url, job_id)
    assert job["error_message"] == "Timed out on RunPod (execution timeout reached)"
    assert job["failed_at"] is not None


def test_a_job_cancelled_on_runpod_cancels_the_work(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    class CancelledOnRunPod(ScriptedWorker):
        def run(self, job_id, job_input):
            httpx.post(f"{endpoint.url}/cancel/{job_id}")
            return super().run(job_id, job_input)

    endpoint = endpoint_for(CancelledOnRunPod())
    job_id, _ = insert(migrated_url, {"prompt": "p", "image_base64": png_b64()})
    status = asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
    assert status is Outcome.CANCELLED
    job, _ = rows(migrated_url, job_id)
    assert (job["job_status"], job["status"]) == ("cancelled", "cancelled")
    assert job["cancelled_at"] is not None
