"""The whole pipeline with nothing scripted in between: rows inserted as the web app inserts them,
Supabase's webhook, `klein serve`, the OpenRouter test server, `klein endpoint` running the real
handler, and the ComfyUI protocol server (or a real ComfyUI when COMFY_API_URL is set). Every
assertion is on database rows, the stored file, HTTP answers and what ComfyUI was asked."""

import base64
import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from devtools.comfy_standin import ComfyTestServer, scaled_size
from tests.e2e.fullstack import HANDLER_JOB_TIMEOUT_S, REAL_COMFY_URL, Stack
from tests.e2e.servekit import execute, insert_work, job_row, png_b64, wait_for, wait_for_job
from tests.fakes.openrouter import default_reply, is_image_request, user_text

KOREAN_PROMPT = "배경을 해변으로 바꿔줘"
TRANSLATED_PROMPT = "EN: " + KOREAN_PROMPT  # what the OpenRouter test server answers
# A title answer as a chatty model gives it: quoted, over 10 characters, a second line.
TITLE_ANSWER = '"바닷가노을 아래에서 걷는 두 사람"\n이 이미지는 해변의 두 사람을 보여줍니다.'
TITLE = "바닷가노을 아래에서"
TAGS = ["I2I", "Image_to_Image", "AI생성"]
REFERENCE_SIZE = (64, 48)  # not square: a swapped width and height shows
MEGAPIXELS = 0.5
FINISHED = ("completed", "failed", "cancelled")


def reference_image() -> str:
    return png_b64(REFERENCE_SIZE, (40, 90, 200))


def korean_job() -> dict[str, Any]:
    return {"prompt": KOREAN_PROMPT, "image_base64": reference_image(), "megapixels": MEGAPIXELS}


def english_job() -> dict[str, Any]:
    return {"prompt": "make the sky purple", "image_base64": reference_image()}


def finished(row: dict[str, Any]) -> bool:
    return row["status"] in FINISHED


def submit(stack: Stack, input_data: dict[str, Any]) -> tuple[str, str]:
    """A work and job inserted as the web app does, announced as Supabase's webhook does."""
    job_id, work_id = insert_work(stack.database_url, input_data)
    assert stack.post_webhook(job_id).status_code == 200
    return job_id, work_id


def until_finished(stack: Stack, job_id: str, timeout_s: float = 15.0) -> dict[str, Any]:
    """The job's row once its work has reached a terminal state."""
    return wait_for_job(stack.database_url, job_id, finished, "the work finishes", timeout_s)


def prompts_queued(comfy: ComfyTestServer) -> int:
    """How many graphs ComfyUI was asked to run."""
    return comfy.calls.count(("POST", "/prompt"))


def prompts_running(comfy_url: str) -> int:
    answer = httpx.get(f"{comfy_url}/queue", timeout=5)
    answer.raise_for_status()
    return len(answer.json()["queue_running"])


def comfy_history(comfy_url: str, prompt_id: str) -> dict[str, Any]:
    """ComfyUI's history entry of one prompt: `prompt` ([number, id, graph, ...]), `status`."""
    answer = httpx.get(f"{comfy_url}/history/{prompt_id}", timeout=5)
    answer.raise_for_status()
    entry: dict[str, Any] = answer.json()[prompt_id]
    return entry


def inputs_of(graph: dict[str, Any], class_type: str) -> list[dict[str, Any]]:
    """The inputs of every node of this type in an API-format graph."""
    return [node["inputs"] for node in graph.values() if node["class_type"] == class_type]


def files_left(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def gpu_released(comfy: ComfyTestServer) -> None:
    """Wait until the handler has interrupted its stalled prompt, ComfyUI runs nothing and the
    job's files are gone, well before the handler's own deadline would have done it."""
    wait_for(
        lambda: (comfy.interrupts > 0, prompts_running(comfy.url), files_left(comfy.root)),
        lambda seen: seen == (True, 0, []),
        "ComfyUI is told to stop the prompt and the job's files are removed",
        timeout_s=HANDLER_JOB_TIMEOUT_S / 3,
    )


def stored_output(stack: Stack, row: dict[str, Any], work_id: str) -> tuple[bytes, tuple[int, int]]:
    """The stored PNG's bytes and true size, once its files row, output_data_json and the served
    copy are checked against it."""
    path = f"{row['user_id']}/{work_id}/output.png"
    data = (stack.storage_dir / "works" / path).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        size = image.size
    file = row["file"]
    assert file is not None
    assert (file["bucket_id"], file["path"]) == ("works", path)
    assert (file["width"], file["height"]) == size
    output = row["output_data_json"]
    assert (output["filename"], output["width"], output["height"]) == ("output.png", *size)
    assert output["image_url"] == file["file_url"]
    served = httpx.get(output["image_url"], timeout=5)
    assert served.status_code == 200
    assert served.content == data
    return data, size


def test_a_korean_prompt_is_translated_edited_titled_and_stored(
    stack, comfy_server, openrouter_server
):
    openrouter_server.reply = lambda body: (
        TITLE_ANSWER if is_image_request(body) else default_reply(body)
    )
    job_id, work_id = submit(stack, korean_job())

    row = until_finished(stack, job_id)

    assert row["status"] == "completed", row["error_message"]
    assert row["job_status"] == "completed"
    assert row["completed_at"] is not None
    assert row["progress"] is None  # what it was doing is over
    assert row["title"] == TITLE
    assert row["tags"] == TAGS
    metadata = row["generation_metadata"]
    assert metadata["prompt"] == TRANSLATED_PROMPT
    assert metadata["original_prompt"] == KOREAN_PROMPT
    assert metadata["translation"] == "llm"
    assert metadata["model"] == "XiCON_KLEIN_I2I"
    assert (metadata["steps"], metadata["cfg"], metadata["megapixels"]) == (4, 1.0, MEGAPIXELS)
    assert metadata["has_image_input"] is True
    data, size = stored_output(stack, row, work_id)
    # The protocol server saves the reference image scaled to the requested megapixels.
    assert size == scaled_size(*REFERENCE_SIZE, MEGAPIXELS)
    assert (metadata["width"], metadata["height"]) == size

    runpod = stack.endpoint.status(row["job_runpod"])
    assert runpod["status"] == "COMPLETED"
    produced = base64.b64decode(runpod["output"]["image"])
    # ComfyUI writes the whole graph (prompt, seed, upload name) into the PNG's text chunks:
    # the stored copy is the same image without them.
    assert b"tEXt" in produced
    assert b"tEXt" not in data
    assert b"prompt" not in data
    assert Image.open(io.BytesIO(data)).tobytes() == Image.open(io.BytesIO(produced)).tobytes()
    assert metadata["seed"] == runpod["output"]["seed"]
    assert metadata["seed"] > 0  # drawn by the orchestrator, not left to the worker

    assert prompts_queued(comfy_server) == 1
    graph = comfy_history(comfy_server.url, runpod["output"]["prompt_id"])["prompt"][2]
    assert [node["text"] for node in inputs_of(graph, "CLIPTextEncode")] == [TRANSLATED_PROMPT]
    assert [node["noise_seed"] for node in inputs_of(graph, "RandomNoise")] == [metadata["seed"]]
    assert files_left(comfy_server.root) == []  # the handler removed the job's input and output
    translations = [user_text(b) for b in openrouter_server.requests if not is_image_request(b)]
    assert translations == [KOREAN_PROMPT]


def test_a_work_without_an_image_fails_before_any_gpu_time(stack, comfy_server):
    job_id, _ = submit(stack, {"prompt": KOREAN_PROMPT})

    row = until_finished(stack, job_id)

    assert row["status"] == "failed"
    assert row["error_message"] == "Missing required parameter: image"
    assert row["failed_at"] is not None
    assert row["job_status"] == "failed"
    assert row["job_runpod"] is None
    jobs = stack.endpoint.health()["jobs"]
    assert (jobs["inQueue"], jobs["inProgress"], jobs["completed"], jobs["failed"]) == (0, 0, 0, 0)
    assert prompts_queued(comfy_server) == 0
    assert ("POST", "/upload/image") not in comfy_server.calls


def test_an_image_url_the_worker_cannot_fetch_fails_the_work_with_its_sentence(
    stack, comfy_server, image_host
):
    url = image_host.url_of("missing.png")
    job_id, _ = submit(stack, {"prompt": "make the sky purple", "image_url": url})

    row = until_finished(stack, job_id)

    assert row["status"] == "failed"
    assert row["error_message"] == "Could not fetch image_url: HTTP 404"
    assert row["job_status"] == "failed"
    runpod = stack.endpoint.status(row["job_runpod"])
    assert (runpod["status"], runpod["error"]) == ("FAILED", row["error_message"])
    assert image_host.requested == ["missing.png"]  # fetched once, by the worker
    assert prompts_queued(comfy_server) == 0


def test_a_comfyui_node_error_fails_the_work_naming_the_node(stack, comfy_server):
    comfy_server.behaviour = "fail"
    job_id, _ = submit(stack, english_job())

    row = until_finished(stack, job_id)

    assert row["status"] == "failed"
    error = row["error_message"]
    assert error.startswith("Processing failed: SamplerCustomAdvanced: "), error
    assert "ran out of memory on your GPU" in error
    assert "\n" not in error
    assert row["job_status"] == "failed"
    assert row["output_file_id"] is None
    assert stack.endpoint.status(row["job_runpod"])["status"] == "FAILED"
    assert prompts_queued(comfy_server) == 1
    assert files_left(comfy_server.root) == []  # the uploaded reference is removed on failure too


def test_a_user_cancellation_mid_run_cancels_the_work_and_the_runpod_job(stack, comfy_server):
    comfy_server.behaviour = "stall"
    job_id, work_id = submit(stack, english_job())
    wait_for(
        lambda: (job_row(stack.database_url, job_id)["status"], prompts_running(comfy_server.url)),
        lambda seen: seen == ("processing", 1),
        "the work is processing and ComfyUI runs its prompt",
    )
    progress = wait_for(
        lambda: job_row(stack.database_url, job_id)["progress"],
        lambda seen: seen is not None and seen["stage"] == "sampling",
        "the work shows the sampler the worker is stuck in",
    )
    assert progress["node"] == "SamplerCustomAdvanced"

    execute(stack.database_url, "UPDATE works SET status = 'cancelled' WHERE id = %s", (work_id,))

    row = wait_for_job(
        stack.database_url,
        job_id,
        lambda r: r["job_status"] == "cancelled",
        "the job is cancelled",
        timeout_s=10,
    )
    assert row["status"] == "cancelled"
    assert row["cancelled_at"] is not None
    assert row["finished_at"] is not None
    assert row["output_file_id"] is None
    assert row["progress"] is None
    assert stack.endpoint.status(row["job_runpod"])["status"] == "CANCELLED"
    assert prompts_queued(comfy_server) == 1
    gpu_released(comfy_server)


def test_a_runpod_execution_timeout_fails_the_work(full_stack, comfy_server):
    comfy_server.behaviour = "stall"
    stack = full_stack(comfy_server.url, comfy_server.root, "--execution-timeout-s", "2")
    job_id, _ = submit(stack, english_job())

    row = until_finished(stack, job_id)

    assert row["status"] == "failed"
    assert row["error_message"] == "Timed out on RunPod (execution timeout reached)"
    assert row["failed_at"] is not None
    assert row["job_status"] == "failed"
    assert stack.endpoint.status(row["job_runpod"])["status"] == "TIMED_OUT"
    assert prompts_queued(comfy_server) == 1
    gpu_released(comfy_server)


@pytest.mark.skipif(
    REAL_COMFY_URL is None,
    reason="needs a real ComfyUI: set COMFY_API_URL=http://HOST:8188 when starting pytest "
    "(the smoke_scale graph it runs needs no model weights)",
)
def test_a_job_completes_against_a_real_comfyui(full_stack):
    stack = full_stack(REAL_COMFY_URL, None, COMFY_WORKFLOW="smoke_scale")
    job_id, work_id = submit(stack, korean_job())

    row = until_finished(stack, job_id, timeout_s=40)

    assert row["status"] == "completed", row["error_message"]
    assert row["job_status"] == "completed"
    assert row["generation_metadata"]["prompt"] == TRANSLATED_PROMPT
    data, size = stored_output(stack, row, work_id)
    runpod = stack.endpoint.status(row["job_runpod"])
    produced = base64.b64decode(runpod["output"]["image"])
    # ComfyUI writes the whole graph (prompt, seed, upload name) into the PNG's text chunks:
    # the stored copy is the same image without them.
    assert b"tEXt" in produced
    assert b"tEXt" not in data
    assert b"prompt" not in data
    assert Image.open(io.BytesIO(data)).tobytes() == Image.open(io.BytesIO(produced)).tobytes()
    assert (runpod["output"]["width"], runpod["output"]["height"]) == size
    entry = comfy_history(REAL_COMFY_URL, runpod["output"]["prompt_id"])
    assert entry["status"]["completed"] is True
    scales = inputs_of(entry["prompt"][2], "ImageScaleToTotalPixels")
    assert [node["megapixels"] for node in scales] == [MEGAPIXELS]
