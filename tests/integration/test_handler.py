"""The worker end to end against the ComfyUI protocol server: success, each error, deadline."""

import asyncio
import base64
import contextlib
import dataclasses
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from devtools.background_server import BackgroundServer
from handler.config import HandlerSettings
from handler.worker import Worker

REPO = Path(__file__).resolve().parents[2]
TEST_INPUT = json.loads((REPO / "handler" / "test_input.json").read_text())["input"]


def png(size=(96, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (20, 120, 220)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_worker(comfy_server, reports=None, **overrides) -> Worker:
    settings = HandlerSettings(
        comfy_api_url=comfy_server.url,
        comfy_root=overrides.pop("comfy_root", comfy_server.input_dir.parent),
        comfy_job_timeout_s=overrides.pop("comfy_job_timeout_s", 20),
        comfy_poll_interval_s=0.05,
        comfy_startup_timeout_s=2,
        progress_interval_s=0,
        **overrides,
    )
    sink = reports.append if reports is not None else (lambda payload: None)
    return Worker.from_settings(settings, lambda job, payload: sink(payload))


def run(worker: Worker, job_input: dict) -> dict:
    return worker.handle({"id": "job-1", "input": job_input})


def comfy_paths(comfy_server) -> list[str]:
    return [path.split("?")[0] for _, path in comfy_server.calls]


def test_a_job_returns_the_image_seed_prompt_id_and_real_size(comfy_server):
    reports: list[dict] = []
    worker = make_worker(comfy_server, reports)
    output = run(worker, {**TEST_INPUT, "megapixels": 0.5, "seed": 42})
    assert "error" not in output, output
    image = Image.open(io.BytesIO(base64.b64decode(output["image"])))
    assert image.format == "PNG"
    assert (output["width"], output["height"]) == image.size
    assert abs(output["width"] * output["height"] - 0.5 * 1024 * 1024) < 0.01 * 1024 * 1024
    assert output["seed"] == 42
    assert output["prompt_id"]
    assert output["timings"]["total_s"] >= 0
    assert {"/upload/image", "/prompt", "/view"} <= set(comfy_paths(comfy_server))
    assert any(r.get("node") == "SamplerCustomAdvanced" and r.get("steps") for r in reports)


def test_progress_reports_name_the_stages_in_order(comfy_server):
    reports: list[dict] = []
    output = run(make_worker(comfy_server, reports), TEST_INPUT)
    assert "error" not in output, output
    stages = list(dict.fromkeys(r["stage"] for r in reports))
    assert stages[:2] == ["preparing image", "queued in ComfyUI"]
    assert stages.index("loading models") < stages.index("sampling") < stages.index("decoding")
    assert stages[-2:] == ["saving", "finishing"]
    sampling = [r for r in reports if r["stage"] == "sampling" and "step" in r]
    assert sampling[-1]["step"] == sampling[-1]["steps"]


def test_the_job_files_are_removed_from_a_local_comfyui_folder(comfy_server):
    output = run(make_worker(comfy_server), TEST_INPUT)
    assert "error" not in output, output
    assert [p for p in comfy_server.input_dir.rglob("*") if p.is_file()] == []
    assert [p for p in comfy_server.output_dir.rglob("*") if p.is_file()] == []


def test_each_job_gets_its_own_upload_name_and_output_file(comfy_server):
    worker = make_worker(comfy_server, comfy_root=None)
    first, second = run(worker, TEST_INPUT), run(worker, TEST_INPUT)
    assert first["prompt_id"] != second["prompt_id"]
    uploads = [p.name for p in comfy_server.input_dir.rglob("*") if p.is_file()]
    outputs = [p.name for p in comfy_server.output_dir.rglob("*") if p.is_file()]
    assert len(set(uploads)) == 2
    assert len(set(outputs)) == 2


def test_a_random_seed_is_drawn_and_returned(comfy_server):
    output = run(make_worker(comfy_server), {**TEST_INPUT, "seed": -1})
    assert output["seed"] >= 1


def test_missing_image_is_the_exact_error_and_reaches_no_comfyui(comfy_server):
    output = run(make_worker(comfy_server), {"prompt": "edit prompt", "steps": 20})
    assert output == {"error": "Missing required parameter: image"}
    assert "/upload/image" not in comfy_paths(comfy_server)


def test_out_of_range_steps_is_the_exact_error(comfy_server):
    output = run(make_worker(comfy_server), {**TEST_INPUT, "steps": 80})
    assert output == {"error": "Invalid parameter: steps must be between 1 and 40"}


def test_a_non_image_is_refused_before_upload(comfy_server):
    junk = base64.b64encode(b"this is not a picture").decode()
    output = run(make_worker(comfy_server), {"prompt": "p", "image_base64": junk})
    assert output == {"error": "Invalid parameter: image is not a readable image"}
    assert "/upload/image" not in comfy_paths(comfy_server)


@pytest.fixture
def image_host():
    """A local HTTP server: /ok.png serves a PNG, /slow.png the same after a second, /hop
    redirects to it, /big streams too much."""
    body = png()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/slow.png":
                time.sleep(1.0)
                self.path = "/ok.png"
            if self.path.startswith("/badheader"):  # a header line without a colon
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nnocolon\r\n\r\n"
                self.wfile.write(head.encode() + body)
                self.close_connection = True
                return
            if self.path == "/ok.png":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path.startswith("/hop"):
                hops = int(self.path.removeprefix("/hop") or 1)
                self.send_response(302)
                self.send_header("Location", f"/hop{hops - 1}" if hops > 1 else "/ok.png")
                self.end_headers()
            elif self.path == "/big":
                self.send_response(200)
                self.end_headers()
                # The worker hangs up at its byte cap: a reset here is the expected end.
                with contextlib.suppress(ConnectionError):
                    self.wfile.write(b"\0" * 3_000_000)
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_image_url_is_fetched_through_redirects(comfy_server, image_host):
    worker = make_worker(comfy_server, allow_private_image_urls=True)
    output = run(worker, {"prompt": "p", "image_url": f"{image_host}/hop3"})
    assert "error" not in output, output


def test_more_than_three_redirects_is_refused(comfy_server, image_host):
    worker = make_worker(comfy_server, allow_private_image_urls=True)
    output = run(worker, {"prompt": "p", "image_url": f"{image_host}/hop4"})
    assert output == {"error": "Could not fetch image_url: more than 3 redirects"}


def test_an_image_over_the_byte_cap_is_refused(comfy_server, image_host):
    worker = make_worker(comfy_server, allow_private_image_urls=True, image_max_bytes=1_000_000)
    output = run(worker, {"prompt": "p", "image_url": f"{image_host}/big"})
    assert output == {"error": "Invalid parameter: image is larger than 1 MB"}


def test_an_http_error_from_the_image_host_is_reported(comfy_server, image_host):
    worker = make_worker(comfy_server, allow_private_image_urls=True)
    output = run(worker, {"prompt": "p", "image_url": f"{image_host}/missing.png"})
    assert output == {"error": "Could not fetch image_url: HTTP 404"}


def test_a_loopback_image_url_is_refused_by_default(comfy_server, image_host):
    output = run(make_worker(comfy_server), {"prompt": "p", "image_url": f"{image_host}/ok.png"})
    assert output == {"error": "Invalid parameter: image_url points to a private or local address"}
    assert "/upload/image" not in comfy_paths(comfy_server)


def test_an_execution_error_names_the_node_type(comfy_server):
    comfy_server.behaviour = "fail"
    output = run(make_worker(comfy_server), TEST_INPUT)
    assert output["error"].startswith("Processing failed: SamplerCustomAdvanced: ")
    assert "refresh_worker" not in output


def test_missing_model_files_are_one_sentence_saying_where_they_go(tmp_path):
    from devtools.comfy_standin import ComfyTestServer

    with ComfyTestServer(tmp_path, models_installed=False) as server:
        output = run(make_worker(server), TEST_INPUT)
    assert output["error"].startswith("ComfyUI lacks model files: put them at ")
    assert "models/text_encoders/qwen_3_8b_fp8mixed.safetensors" in output["error"]
    assert output["error"].endswith("(see docs/runpod.md, 'Where the model files go')")


def test_a_stalled_run_is_interrupted_at_the_deadline(comfy_server):
    comfy_server.behaviour = "stall"
    output = run(make_worker(comfy_server, comfy_job_timeout_s=1.5), TEST_INPUT)
    assert output == {
        "error": "Timed out after 1.5 s waiting for ComfyUI; the prompt was interrupted"
    }
    assert comfy_server.interrupts >= 1


def test_a_stopped_job_interrupts_its_prompt_and_ends_long_before_its_deadline(comfy_server):
    comfy_server.behaviour = "stall"
    worker = make_worker(comfy_server, comfy_job_timeout_s=30)
    outputs: list[dict] = []
    thread = threading.Thread(target=lambda: outputs.append(run(worker, TEST_INPUT)))
    thread.start()
    while ("POST", "/prompt") not in comfy_server.calls and thread.is_alive():
        thread.join(0.02)
    worker.stop()
    thread.join(5)  # the deadline is 30 s away: ending now means the stop was heard
    assert not thread.is_alive()
    assert outputs == [{"error": "Stopped: the job was cancelled; the prompt was interrupted"}]
    assert comfy_server.interrupts >= 1


def test_a_worker_runs_its_next_job_normally_after_a_stop(comfy_server):
    worker = make_worker(comfy_server)
    worker.stop()  # between jobs: nothing runs, and the next job must not inherit it
    output = run(worker, TEST_INPUT)
    assert "error" not in output, output


def test_a_dropped_socket_falls_back_to_history(comfy_server):
    comfy_server.behaviour = "drop_socket"
    output = run(make_worker(comfy_server), TEST_INPUT)
    assert "error" not in output, output
    assert any(path.startswith("/history/") for path in comfy_paths(comfy_server))


def test_history_lagging_behind_the_socket_is_tolerated(comfy_server):
    comfy_server.behaviour = "slow_history"
    output = run(make_worker(comfy_server), TEST_INPUT)
    assert "error" not in output, output


def test_comfyui_gone_fails_the_job_and_asks_for_a_fresh_worker(comfy_server):
    worker = make_worker(comfy_server)
    url = comfy_server.url
    comfy_server.stop()
    output = run(worker, TEST_INPUT)
    assert output == {
        "error": f"ComfyUI is not reachable at {url}; start ComfyUI there "
        "or set COMFY_API_URL to a running ComfyUI",
        "refresh_worker": True,
    }


@pytest.fixture
def odd_comfy():
    """A server that answers as ComfyUI does until the upload, whose answer is not ComfyUI's."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._answer(b"{}")

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._answer(b"<html>a proxy's page</html>" if "upload" in self.path else b"[1]")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_answer_that_is_not_comfyuis_fails_the_job_saying_so(odd_comfy, tmp_path, caplog):
    """Not JSON, or JSON without the field, used to be 'internal error (JSONDecodeError)' with
    a traceback; it is ComfyUI's fault, so the worker is also replaced."""
    settings = HandlerSettings(
        comfy_api_url=odd_comfy, comfy_root=tmp_path, comfy_startup_timeout_s=1
    )
    worker = Worker.from_settings(settings, lambda job, payload: None)
    output = run(worker, TEST_INPUT)
    assert output == {
        "error": "ComfyUI sent an answer without its name on /upload/image",
        "refresh_worker": True,
    }
    assert "Traceback" not in caplog.text


@pytest.fixture
def endless_view():
    """A /view that never ends: /view?filename=flood sends as fast as it can, any other name a
    byte every 50 ms."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            flood = "filename=flood" in self.path
            with contextlib.suppress(ConnectionError):
                while True:
                    self.wfile.write(b"\0" * 1_000_000 if flood else b"\0")
                    if not flood:
                        time.sleep(0.05)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_output_read_is_bounded_in_size_and_time(endless_view):
    """ComfyUI's /view was read whole: an endless answer filled the worker's memory, a trickle
    outlasted the job's deadline."""
    import requests

    from handler.comfy import VIEW_MAX_BYTES, ComfyClient
    from handler.errors import ComfyRejected, ComfyUnavailable

    client = ComfyClient(endless_view, requests.Session(), timeout_s=5)
    with pytest.raises(ComfyRejected, match=f"over {VIEW_MAX_BYTES // 2**20} MiB"):
        client.view({"filename": "flood", "type": "output"})
    begun = time.monotonic()
    with pytest.raises(ComfyUnavailable, match="too slowly for the deadline"):
        client.view({"filename": "trickle", "type": "output"}, deadline=begun + 1.0)
    assert time.monotonic() - begun < 3


class TricklingComfy(BackgroundServer):
    """ComfyUI until the prompt is queued; then its websocket starts a text frame of 10 MB and
    sends it a byte every 0.1 s (or, with `huge`, a frame claiming 2^62 bytes)."""

    thread_name = "trickling-comfy"

    def __init__(self, *, huge: bool = False) -> None:
        super().__init__()
        self.huge = huge
        self.queued = asyncio.Event()

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.post("/upload/image", lambda _: web.json_response({"name": "in.png"})),
            web.post("/prompt", self._prompt),
            web.get("/ws", self._socket),
            web.get("/history/{prompt_id}", lambda _: web.json_response({})),
            web.post("/interrupt", lambda _: web.json_response({})),
            web.post("/queue", lambda _: web.json_response({})),
        ]

    async def _prompt(self, request: web.Request) -> web.Response:
        await request.read()
        self.queued.set()
        return web.json_response({"prompt_id": "p1", "number": 1})

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await self.queued.wait()
        transport = request.transport
        assert transport is not None
        length = 2**62 if self.huge else 10_000_000
        transport.write(b"\x81\x7f" + length.to_bytes(8, "big"))  # a text frame, unmasked
        while not transport.is_closing():
            transport.write(b"x")
            await asyncio.sleep(0.1)
        return ws


@pytest.mark.parametrize("huge", [False, True], ids=["trickled", "absurd-length"])
def test_a_websocket_frame_that_never_completes_ends_at_the_jobs_deadline(tmp_path, huge):
    """A read waits for a whole frame, so a trickled one held the job past its deadline (and its
    stop); now the socket is shut at the deadline and the job ends timed out."""
    with TricklingComfy(huge=huge) as comfy:
        settings = HandlerSettings(
            comfy_api_url=comfy.url, comfy_root=tmp_path, comfy_job_timeout_s=1.5
        )
        worker = Worker.from_settings(settings, lambda job, payload: None)
        begun = time.monotonic()
        output = run(worker, TEST_INPUT)
        took = time.monotonic() - begun
    assert output == {
        "error": "Timed out after 1.5 s waiting for ComfyUI; the prompt was interrupted"
    }
    assert took < 4


def test_credentials_in_comfy_api_url_reach_neither_the_job_nor_the_log(caplog):
    """A proxy's user and password in COMFY_API_URL went into every failed job's error, which
    RunPod stores and the web app shows."""
    settings = HandlerSettings(
        comfy_api_url="http://admin:s3cr3tTOKEN@127.0.0.1:9", comfy_startup_timeout_s=0.2
    )
    worker = Worker.from_settings(settings, lambda job, payload: None)
    with caplog.at_level(logging.INFO):
        worker.wait_for_comfy()
        output = run(worker, TEST_INPUT)
    assert output["error"].startswith("ComfyUI is not reachable at http://***@127.0.0.1:9;")
    assert "s3cr3tTOKEN" not in caplog.text + output["error"]
    assert "***@127.0.0.1:9" in caplog.text


def test_the_startup_wait_is_bounded(tmp_path):
    settings = HandlerSettings(comfy_api_url="http://127.0.0.1:9", comfy_startup_timeout_s=0.5)
    worker = Worker.from_settings(settings, lambda job, payload: None)
    assert worker.wait_for_comfy() is False


def handler_process(
    comfy_url: str,
    *args: str,
    cwd: Path,
    startup_timeout_s: float = 5,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **(extra_env or {}),
        "COMFY_API_URL": comfy_url,
        "COMFY_STARTUP_TIMEOUT_S": str(startup_timeout_s),
        "COMFY_JOB_TIMEOUT_S": "30",
        "RUNPOD_DEBUG_LEVEL": "INFO",
    }
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    return subprocess.run(
        [sys.executable, "-m", "handler", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


def test_python_m_handler_runs_test_input_json(comfy_server):
    done = handler_process(comfy_server.url, cwd=REPO / "handler")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "completed successfully" in done.stdout + done.stderr


def test_python_m_handler_with_a_missing_image_fails_with_the_sentence(comfy_server):
    job = json.dumps({"input": {"prompt": "edit prompt"}})
    done = handler_process(comfy_server.url, "--test_input", job, cwd=REPO)
    assert done.returncode == 1
    assert "Missing required parameter: image" in done.stdout + done.stderr


def test_python_m_handler_logs_no_image_url_whose_headers_are_malformed(comfy_server, image_host):
    """urllib3 warned of the header defect with the whole URL (a presigned URL's signature) and
    a traceback."""
    url = f"{image_host}/badheader?X-Amz-Signature=SECRETSIG123"
    job = json.dumps({"input": {"prompt": "edit prompt", "image_url": url}})
    done = handler_process(
        comfy_server.url,
        "--test_input",
        job,
        cwd=REPO,
        extra_env={"ALLOW_PRIVATE_IMAGE_URLS": "true"},
    )
    assert "completed successfully" in done.stdout + done.stderr  # fetched (its body is fine)
    assert "SECRETSIG123" not in done.stdout + done.stderr


def test_python_m_handler_answers_a_bad_job_at_once_while_comfyui_is_away():
    """It once waited the whole start-up timeout (180 s) for ComfyUI before reading the input."""
    job = json.dumps({"input": {"prompt": "edit prompt"}})
    begun = time.monotonic()
    done = handler_process(
        "http://127.0.0.1:9", "--test_input", job, cwd=REPO, startup_timeout_s=180
    )
    assert "Missing required parameter: image" in done.stdout + done.stderr
    assert time.monotonic() - begun < 30  # the process start-up itself takes a few seconds


def test_warm_up_runs_the_graph_once_on_a_generated_image(comfy_server):
    worker = make_worker(comfy_server)
    worker.warm_up()
    paths = comfy_paths(comfy_server)
    assert paths.count("/prompt") == 1
    assert "/view" in paths


def uploaded_images(comfy_server) -> list[Image.Image]:
    files = sorted(p for p in comfy_server.input_dir.rglob("*") if p.is_file())
    return [Image.open(io.BytesIO(path.read_bytes())) for path in files]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_comfyui_receives_one_png_frame_of_an_animated_gif(comfy_server):
    """A GIF's later frames once reached LoadImage, which stacks every frame as float32."""
    frames = [Image.new("RGB", (120, 80), (index * 20, 0, 0)) for index in range(12)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    worker = make_worker(comfy_server, comfy_root=None)
    output = run(worker, {"prompt": "p", "image_base64": b64(buffer.getvalue())})
    assert "error" not in output, output
    [uploaded] = uploaded_images(comfy_server)
    assert (uploaded.format, getattr(uploaded, "n_frames", 1)) == ("PNG", 1)
    assert uploaded.size == (120, 80)


def test_comfyui_receives_the_photo_upright(comfy_server):
    exif = Image.Exif()
    exif[0x0112] = 8  # displayed rotated 90 degrees counter-clockwise
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (10, 200, 10)).save(buffer, format="JPEG", exif=exif)
    worker = make_worker(comfy_server, comfy_root=None)
    output = run(worker, {"prompt": "p", "image_base64": b64(buffer.getvalue())})
    assert "error" not in output, output
    [uploaded] = uploaded_images(comfy_server)
    assert (uploaded.format, uploaded.size) == ("PNG", (64, 96))


def test_an_inline_image_too_large_for_runpod_is_refused_before_comfyui(comfy_server):
    output = run(make_worker(comfy_server), {"prompt": "p", "image_base64": "A" * 10_000_000})
    assert output["error"].startswith(
        "Invalid parameter: image_base64 is too large to send through RunPod"
    )
    assert "/upload/image" not in comfy_paths(comfy_server)


def test_a_parser_mismatch_image_url_is_refused_before_comfyui(comfy_server, image_host):
    url = image_host + "\\@images.example.com/ok.png"
    worker = make_worker(comfy_server)
    # never a public address: nothing may leave this machine even if the refusal regressed
    worker.context = dataclasses.replace(worker.context, resolve=lambda host: ["10.0.0.1"])
    output = run(worker, {"prompt": "p", "image_url": url})
    assert output == {
        "error": "Invalid parameter: image_url must not contain backslashes, spaces or control "
        "characters"
    }
    assert "/upload/image" not in comfy_paths(comfy_server)


SENTENCE_STARTS = (
    "Missing required parameter: ",
    "Invalid parameter: ",
    "Invalid input: ",
    "Could not fetch image_url: ",
)


def _image_bytes(kind: str) -> bytes:
    buffer = io.BytesIO()
    match kind:
        case "png":
            Image.new("RGB", (40, 30), (1, 2, 3)).save(buffer, format="PNG")
        case "gif":
            frames = [Image.new("RGB", (20, 20), (i * 60, 0, 0)) for i in range(3)]
            frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
        case _:
            buffer.write(kind.encode())
    return buffer.getvalue()


image_fields = st.one_of(
    st.builds(
        lambda kind: {"image_base64": b64(_image_bytes(kind))},
        st.sampled_from(["png", "gif", "not an image", ""]),
    ),
    st.builds(lambda text: {"image_base64": text}, st.text(max_size=40)),
    st.builds(
        lambda host, path: {"image_url": f"http://{host}/{path}"},
        st.sampled_from(["127.0.0.1", "[::127.0.0.1]", "images.test", "10.0.0.1:8", "a\\@b"]),
        st.text(max_size=20),
    ),
    st.builds(lambda text: {"image_url": text}, st.text(max_size=40)),
    st.just({}),
)
other_fields = st.dictionaries(
    st.sampled_from(["prompt", "seed", "steps", "cfg", "megapixels", "trace"]),
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12)),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(image=image_fields, others=other_fields, prompt=st.sampled_from(["p", None]))
@example(image={"image_base64": b64(_image_bytes("gif"))}, others={"steps": 2}, prompt="p")
def test_any_job_input_ends_in_an_image_or_a_sentence(comfy_server, image, others, prompt):
    """The whole worker entry, ComfyUI protocol server behind it: never a crash or a hang.
    Hostnames resolve to a private address here, so no URL leaves this machine."""
    worker = make_worker(comfy_server, comfy_job_timeout_s=10, image_fetch_timeout_s=2)
    worker.context = dataclasses.replace(worker.context, resolve=lambda host: ["10.0.0.1"])
    job_input = {**others, **image} if prompt is None else {**others, **image, "prompt": prompt}
    output = run(worker, job_input)
    if "error" in output:
        assert output["error"].startswith(SENTENCE_STARTS), output
    else:
        assert Image.open(io.BytesIO(base64.b64decode(output["image"]))).format == "PNG"


def uploaded_files(comfy_server) -> list[bytes]:
    return [p.read_bytes() for p in comfy_server.input_dir.rglob("*") if p.is_file()]


def test_a_ready_png_reaches_comfyui_byte_for_byte(comfy_server):
    original = png((120, 80))
    job = {**TEST_INPUT, "image_base64": base64.b64encode(original).decode()}
    output = run(make_worker(comfy_server, comfy_root=None), job)
    assert "error" not in output, output
    assert uploaded_files(comfy_server) == [original]


def test_a_jpeg_reaches_comfyui_as_a_png(comfy_server):
    buffer = io.BytesIO()
    Image.new("RGB", (120, 80), (20, 120, 220)).save(buffer, format="JPEG")
    job = {**TEST_INPUT, "image_base64": base64.b64encode(buffer.getvalue()).decode()}
    output = run(make_worker(comfy_server, comfy_root=None), job)
    assert "error" not in output, output
    [uploaded] = uploaded_files(comfy_server)
    assert Image.open(io.BytesIO(uploaded)).format == "PNG"


def test_the_output_record_comes_from_the_websocket_without_a_history_call(comfy_server):
    output = run(make_worker(comfy_server), TEST_INPUT)
    assert "error" not in output, output
    assert "/view" in comfy_paths(comfy_server)
    assert not any(path.startswith("/history") for path in comfy_paths(comfy_server))


class UndecodableFrames:
    """A websocket whose text frame is not UTF-8 (the client no longer checks that itself)."""

    def settimeout(self, timeout_s: float) -> None:
        pass

    def recv(self) -> str:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")


def test_a_text_frame_that_is_not_utf8_falls_back_to_history(comfy_server):
    from handler.job import follow
    from handler.run_state import Phase

    worker = make_worker(comfy_server)
    prompt_id = run(worker, TEST_INPUT)["prompt_id"]  # a finished prompt, in /history
    deadline = time.monotonic() + 10
    state, saved = follow(worker.context, UndecodableFrames(), prompt_id, deadline, print)
    assert (state.phase, saved) == (Phase.SUCCEEDED, [])
