"""The handler RunPod runs (`Worker.handle_async`): input answered before ComfyUI is awaited,
a cancelled job interrupts its prompt, missing model files named with where they go."""

import asyncio
import logging
import time

import pytest

from handler.config import HandlerSettings
from handler.worker import Worker
from tests.integration.test_handler import TEST_INPUT, image_host, make_worker  # noqa: F401

JOB_WITHOUT_IMAGE = {"id": "job-1", "input": {"prompt": "edit prompt"}}


def test_a_bad_job_is_answered_at_once_while_comfyui_does_not_answer():
    settings = HandlerSettings(comfy_api_url="http://127.0.0.1:9", comfy_startup_timeout_s=30)
    worker = Worker.from_settings(settings, lambda job, payload: None)
    begun = time.monotonic()
    output = asyncio.run(asyncio.wait_for(worker.handle_async(JOB_WITHOUT_IMAGE), 5))
    assert output == {"error": "Missing required parameter: image"}
    assert time.monotonic() - begun < 2


def test_a_good_job_runs_through_the_async_handler(comfy_server):
    output = asyncio.run(make_worker(comfy_server).handle_async({"id": "j", "input": TEST_INPUT}))
    assert "error" not in output, output
    assert output["prompt_id"]


def test_a_first_job_reports_waiting_for_comfyui_then_its_stages(comfy_server):
    reports: list[dict] = []
    worker = make_worker(comfy_server, reports)
    asyncio.run(worker.handle_async({"id": "j", "input": TEST_INPUT}))
    asyncio.run(worker.handle_async({"id": "k", "input": TEST_INPUT}))
    stages = [r["stage"] for r in reports]
    assert stages[:2] == ["waiting for ComfyUI", "preparing image"]
    assert stages.count("waiting for ComfyUI") == 1, "a started worker does not wait again"


async def cancel_once_queued(worker: Worker, comfy_server) -> tuple[asyncio.Task, float]:
    task = asyncio.create_task(worker.handle_async({"id": "job-1", "input": TEST_INPUT}))
    deadline = time.monotonic() + 10
    while ("POST", "/prompt") not in comfy_server.calls and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert ("POST", "/prompt") in comfy_server.calls
    task.cancel()  # what RunPod's SDK does on a job-stop signal or the execution timeout
    cancelled_at = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    return task, time.monotonic() - cancelled_at


def test_cancelling_the_job_interrupts_and_dequeues_its_prompt_within_a_second(comfy_server):
    comfy_server.behaviour = "stall"
    worker = make_worker(comfy_server, comfy_job_timeout_s=30)
    task, took_s = asyncio.run(cancel_once_queued(worker, comfy_server))
    assert task.cancelled()
    assert took_s < 1.5  # the job's own deadline is 30 s away
    assert comfy_server.interrupts >= 1
    assert ("POST", "/interrupt") in comfy_server.calls
    assert ("POST", "/queue") in comfy_server.calls  # the prompt is removed from the queue


def test_the_next_job_runs_normally_after_a_cancelled_one(comfy_server):
    comfy_server.behaviour = "stall"
    worker = make_worker(comfy_server, comfy_job_timeout_s=30)
    asyncio.run(cancel_once_queued(worker, comfy_server))
    comfy_server.behaviour = "success"
    output = asyncio.run(worker.handle_async({"id": "job-2", "input": TEST_INPUT}))
    assert "error" not in output, output


def test_a_job_cancelled_while_its_image_downloads_never_queues_its_prompt(
    comfy_server,
    image_host,  # noqa: F811 (the fixture)
):
    """RunPod stops a job whose reference image is still coming: nothing of it reaches ComfyUI,
    even once the next job has started (a stop shared by every job was cleared for the next
    one, and the stopped job went on to run its whole prompt beside it)."""
    worker = make_worker(comfy_server, allow_private_image_urls=True)
    slow = {"prompt": "p", "image_url": f"{image_host}/slow.png"}

    async def scenario() -> dict:
        first = asyncio.create_task(worker.handle_async({"id": "job-1", "input": slow}))
        await asyncio.sleep(0.3)  # its image comes after a second
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await worker.handle_async({"id": "job-2", "input": TEST_INPUT})

    second = asyncio.run(scenario())
    time.sleep(1.0)  # whatever the first job's thread would still do, it has done
    assert "error" not in second, second
    assert comfy_server.calls.count(("POST", "/prompt")) == 1  # the second job's only
    assert comfy_server.calls.count(("POST", "/upload/image")) == 1


def test_start_up_logs_each_missing_model_file_with_its_folder_and_the_docs(tmp_path, caplog):
    from devtools.comfy_standin import ComfyTestServer

    caplog.set_level(logging.INFO, logger="handler")
    with ComfyTestServer(tmp_path, models_installed=False) as server:
        make_worker(server).start_up()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    for path in (
        "models/diffusion_models/flux-2-klein-9b-fp8.safetensors",
        "models/text_encoders/qwen_3_8b_fp8mixed.safetensors",
        "models/vae/flux2-vae.safetensors",
    ):
        assert any(path in message for message in errors), errors
    assert all("docs/runpod.md, 'Where the model files go'" in m for m in errors), errors


def test_start_up_logs_no_missing_model_when_comfyui_lists_them(comfy_server, caplog):
    caplog.set_level(logging.INFO, logger="handler")
    make_worker(comfy_server).start_up()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_job_failing_for_missing_models_says_where_they_go(tmp_path):
    from devtools.comfy_standin import ComfyTestServer

    with ComfyTestServer(tmp_path, models_installed=False) as server:
        output = asyncio.run(make_worker(server).handle_async({"id": "j", "input": TEST_INPUT}))
    assert output == {
        "error": "ComfyUI lacks model files: put them at "
        "models/diffusion_models/flux-2-klein-9b-fp8.safetensors, "
        "models/text_encoders/qwen_3_8b_fp8mixed.safetensors, "
        "models/vae/flux2-vae.safetensors (see docs/runpod.md, 'Where the model files go')"
    }
