"""The ComfyUI test server speaks the protocol recorded from a real ComfyUI 0.33.0."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket
from PIL import Image

from devtools.comfy_standin import ComfyTestServer, load_transcript, scaled_size

TRANSCRIPT = load_transcript()
CLIENT_ID: str = TRANSCRIPT["client_id"]
CALLS = {call["label"]: call for call in TRANSCRIPT["calls"]}
WS = {section["title"]: [m["msg"] for m in section["messages"]] for section in TRANSCRIPT["ws"]}
GRAPH_A = CALLS["graph A – queue prompt"]["request_json"]
GRAPH_A_AGAIN = CALLS["graph A again – queue prompt"]["request_json"]
GRAPH_B = CALLS["graph B – queue prompt"]["request_json"]
CORRUPT = CALLS["runtime failure (corrupt input image) – queue prompt"]["request_json"]
KLEIN = CALLS["runtime failure (Klein graph, placeholder weights) – queue prompt"]["request_json"]
REJECTED = [
    label
    for label, call in CALLS.items()
    if call["method"] == "POST" and call["path"] == "/prompt" and call["status"] == 400
]
TIMEOUT_S = 10


# --------------------------------------------------------------------------- helpers


def png_bytes(
    width: int = 640, height: int = 480, color: tuple[int, int, int] = (0, 0, 128)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def upload(server: ComfyTestServer, name: str, data: bytes, overwrite: bool = True) -> Any:
    form = {"type": "input", "overwrite": "true"} if overwrite else {"type": "input"}
    response = requests.post(
        f"{server.url}/upload/image",
        files={"image": (name, data, "image/png")},
        data=form,
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200
    return response.json()


def get_json(server: ComfyTestServer, path: str) -> Any:
    response = requests.get(f"{server.url}{path}", timeout=TIMEOUT_S)
    assert response.status_code == 200
    return response.json()


def queue(server: ComfyTestServer, body: dict[str, Any]) -> str:
    response = requests.post(f"{server.url}/prompt", json=body, timeout=TIMEOUT_S)
    assert response.status_code == 200, response.text
    prompt_id: str = response.json()["prompt_id"]
    return prompt_id


@contextmanager
def socket_of(server: ComfyTestServer, client_id: str = CLIENT_ID) -> Iterator[websocket.WebSocket]:
    """A websocket with its initial status message already read."""
    url = f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}"
    ws = websocket.create_connection(url, timeout=TIMEOUT_S)
    try:
        assert json.loads(ws.recv())["type"] == "status"
        yield ws
    finally:
        ws.close()


def read_until(ws: websocket.WebSocket, done: Any) -> list[dict[str, Any]]:
    """Messages up to and including the first for which `done(message)` is true."""
    messages: list[dict[str, Any]] = []
    while not messages or not done(messages[-1]):
        messages.append(json.loads(ws.recv()))
    return messages


def until_idle(ws: websocket.WebSocket, prompt_id: str) -> list[dict[str, Any]]:
    """Messages up to ComfyUI's end-of-prompt signal (`executing` with node null)."""
    return read_until(
        ws,
        lambda m: (
            m["type"] == "executing"
            and m["data"]["node"] is None
            and m["data"].get("prompt_id") == prompt_id
        ),
    )


def types_until_closed(ws: websocket.WebSocket) -> list[str]:
    """Message types until the server cuts the connection (a timeout fails the test)."""
    seen: list[str] = []
    try:
        while True:
            seen.append(json.loads(ws.recv())["type"])
    except websocket.WebSocketConnectionClosedException:
        return seen


def types(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in messages]


def normalised(value: Any, ids: list[str]) -> Any:
    """Prompt ids and clock values replaced, so two runs' records compare equal."""
    if isinstance(value, dict):
        return {
            normalised(k, ids): 0 if k in ("timestamp", "create_time") else normalised(v, ids)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [normalised(v, ids) for v in value]
    return "<prompt_id>" if value in ids else value


def run_to_idle(
    server: ComfyTestServer, ws: websocket.WebSocket, body: dict[str, Any]
) -> tuple[str, list[dict[str, Any]]]:
    prompt_id = queue(server, body)
    return prompt_id, until_idle(ws, prompt_id)


def history_entry(server: ComfyTestServer, prompt_id: str) -> dict[str, Any]:
    entry: dict[str, Any] = get_json(server, f"/history/{prompt_id}")[prompt_id]
    return entry


# --------------------------------------------------------------------------- probes and uploads


def test_probe_routes_answer_like_the_real_server(comfy_server: ComfyTestServer) -> None:
    assert get_json(comfy_server, "/system_stats") == CALLS["system_stats"]["response"]
    assert get_json(comfy_server, "/queue") == {"queue_running": [], "queue_pending": []}
    assert get_json(comfy_server, "/prompt") == {"exec_info": {"queue_remaining": 0}}
    assert get_json(comfy_server, "/object_info/NoSuchNode") == {}
    assert len(get_json(comfy_server, "/object_info")) == 634
    assert ("GET", "/system_stats") in comfy_server.calls


def test_the_front_page_answers_like_comfyui_for_clients_that_poll_it(
    comfy_server: ComfyTestServer,
) -> None:
    response = requests.get(comfy_server.url + "/", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")


def test_object_info_lists_input_files_and_installed_models(comfy_server: ComfyTestServer) -> None:
    upload(comfy_server, "probe_input.png", png_bytes())
    load_image = get_json(comfy_server, "/object_info/LoadImage")["LoadImage"]
    assert load_image["input"]["required"]["image"] == [["probe_input.png"], {"image_upload": True}]
    unet = get_json(comfy_server, "/object_info/UNETLoader")["UNETLoader"]
    assert unet["input"]["required"]["unet_name"][0] == ["flux-2-klein-9b-fp8.safetensors"]
    vae = get_json(comfy_server, "/object_info")["VAELoader"]
    assert vae["input"]["required"]["vae_name"][0] == ["flux2-vae.safetensors", "pixel_space"]

    comfy_server.models_installed = False
    clip = get_json(comfy_server, "/object_info/CLIPLoader")["CLIPLoader"]
    assert clip["input"]["required"]["clip_name"][0] == []


def test_upload_keeps_identical_bytes_and_renames_different_ones(
    comfy_server: ComfyTestServer,
) -> None:
    first, second = png_bytes(), png_bytes(color=(9, 9, 9))
    assert upload(comfy_server, "probe_input.png", first) == CALLS["upload"]["response"]
    again = upload(comfy_server, "probe_input.png", first, overwrite=False)
    assert again == CALLS["upload again (no overwrite)"]["response"]
    renamed = upload(comfy_server, "probe_input.png", second, overwrite=False)
    assert renamed == CALLS["upload different bytes same name"]["response"]
    assert (comfy_server.input_dir / "probe_input.png").read_bytes() == first
    assert (comfy_server.input_dir / "probe_input (1).png").read_bytes() == second
    upload(comfy_server, "probe_input.png", second, overwrite=True)
    assert (comfy_server.input_dir / "probe_input.png").read_bytes() == second


# --------------------------------------------------------------------------- running prompts


def test_happy_path_matches_the_transcript(comfy_server: ComfyTestServer) -> None:
    url = f"ws://127.0.0.1:{comfy_server.port}/ws?clientId={CLIENT_ID}"
    ws = websocket.create_connection(url, timeout=TIMEOUT_S)
    try:
        assert json.loads(ws.recv()) == WS["on connect"][0]
        upload(comfy_server, "probe_input.png", png_bytes())
        prompt_id, messages = run_to_idle(comfy_server, ws, GRAPH_A)
    finally:
        ws.close()

    assert types(messages) == types(WS["graph A"])
    recorded_id = CALLS["graph A – queue prompt"]["response"]["prompt_id"]
    assert normalised(messages, [prompt_id]) == normalised(WS["graph A"], [recorded_id])
    history = get_json(comfy_server, f"/history/{prompt_id}")
    assert normalised(history, [prompt_id]) == normalised(
        CALLS["history A"]["response"], [recorded_id]
    )
    view = requests.get(
        f"{comfy_server.url}/view",
        params={"filename": "scaled_00001_.png", "subfolder": "probe", "type": "output"},
        timeout=TIMEOUT_S,
    )
    assert view.status_code == 200
    assert view.headers["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(view.content))
    assert image.size == (591, 443) == tuple(TRANSCRIPT["view_A"]["size"])
    assert list(image.info) == ["prompt"]
    assert (comfy_server.output_dir / "probe" / "scaled_00001_.png").is_file()


def test_rerun_with_same_inputs_is_cached_and_writes_no_file(comfy_server: ComfyTestServer) -> None:
    upload(comfy_server, "probe_input.png", png_bytes())
    with socket_of(comfy_server) as ws:
        run_to_idle(comfy_server, ws, GRAPH_A)
        prompt_id, again = run_to_idle(comfy_server, ws, GRAPH_A_AGAIN)
        _, variant = run_to_idle(comfy_server, ws, GRAPH_B)

    assert types(again) == types(WS["graph A again"])
    assert again[3]["data"]["nodes"] == ["1", "2", "3"]
    assert history_entry(comfy_server, prompt_id)["outputs"]["3"]["images"][0]["filename"] == (
        "scaled_00001_.png"
    )
    assert types(variant) == types(WS["graph B"])
    assert sorted(os.listdir(comfy_server.output_dir / "probe")) == [
        "inverted_00001_.png",
        "scaled_00001_.png",
    ]
    with Image.open(comfy_server.output_dir / "probe" / "inverted_00001_.png") as inverted:
        assert inverted.getpixel((0, 0)) == (255, 255, 127)


def test_save_image_counts_up_for_a_reused_prefix(comfy_server: ComfyTestServer) -> None:
    upload(comfy_server, "probe_input.png", png_bytes())
    smaller = json.loads(json.dumps(GRAPH_A))
    smaller["prompt"]["2"]["inputs"]["megapixels"] = 0.1
    with socket_of(comfy_server) as ws:
        run_to_idle(comfy_server, ws, GRAPH_A)
        _, messages = run_to_idle(comfy_server, ws, smaller)

    executed = next(m for m in messages if m["type"] == "executed")
    assert executed["data"]["output"]["images"][0]["filename"] == "scaled_00002_.png"
    with Image.open(comfy_server.output_dir / "probe" / "scaled_00002_.png") as saved:
        assert saved.size == scaled_size(640, 480, 0.1)


def test_klein_graph_saves_the_scaled_reference_and_reports_sampler_progress(
    comfy_server: ComfyTestServer,
) -> None:
    upload(comfy_server, "probe_input.png", png_bytes())
    with socket_of(comfy_server) as ws:
        prompt_id, messages = run_to_idle(comfy_server, ws, KLEIN)

    progress = [m["data"] for m in messages if m["type"] == "progress"]
    assert [(p["value"], p["max"], p["node"]) for p in progress] == [
        (step, 4, "75:64") for step in (1, 2, 3, 4)
    ]
    executing = [m["data"]["node"] for m in messages if m["type"] == "executing"]
    assert executing.index("75:64") < executing.index("75:65") < executing.index("9")
    assert types(messages)[-3:] == ["execution_success", "status", "executing"]
    entry = history_entry(comfy_server, prompt_id)
    assert entry["status"]["status_str"] == "success"
    saved = entry["outputs"]["9"]["images"][0]
    assert saved == {"filename": "Flux2-Klein_00001_.png", "subfolder": "", "type": "output"}
    with Image.open(comfy_server.output_dir / saved["filename"]) as image:
        assert image.size == scaled_size(640, 480, 1.0)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("label", REJECTED)
def test_rejected_prompts_get_the_transcript_400_bodies(
    comfy_server: ComfyTestServer, label: str
) -> None:
    upload(comfy_server, "probe_input.png", png_bytes())
    comfy_server.models_installed = "model files" not in label
    call = CALLS[label]
    with socket_of(comfy_server) as ws:
        response = requests.post(f"{comfy_server.url}/prompt", json=call["request_json"], timeout=5)
        assert response.status_code == 400
        assert response.json() == call["response"]
        assert get_json(comfy_server, "/prompt") == {"exec_info": {"queue_remaining": 0}}
        ws.settimeout(0.2)
        with pytest.raises(websocket.WebSocketTimeoutException):
            ws.recv()


def _node_errors_of(comfy_server: ComfyTestServer, prompt: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(f"{comfy_server.url}/prompt", json={"prompt": prompt}, timeout=5)
    assert response.status_code == 400
    body: dict[str, Any] = response.json()
    return body


def test_value_below_min_and_broken_links_are_rejected(comfy_server: ComfyTestServer) -> None:
    upload(comfy_server, "probe_input.png", png_bytes())
    below = json.loads(json.dumps(GRAPH_A["prompt"]))
    below["2"]["inputs"]["megapixels"] = 0.001
    error = _node_errors_of(comfy_server, below)["node_errors"]["2"]["errors"][0]
    assert error["type"] == "value_smaller_than_min"
    assert error["message"] == "Value 0.001 smaller than min of 0.01"

    missing_node = json.loads(json.dumps(GRAPH_A["prompt"]))
    missing_node["3"]["inputs"]["images"] = ["99", 0]
    body = _node_errors_of(comfy_server, missing_node)
    assert body["error"]["details"] == "Exception when validating node: '99'"
    assert body["node_errors"]["3"]["errors"][0]["type"] == "exception_during_validation"

    missing_output = json.loads(json.dumps(GRAPH_A["prompt"]))
    missing_output["2"]["inputs"]["image"] = ["1", 7]
    errors = _node_errors_of(comfy_server, missing_output)["node_errors"]["2"]["errors"]
    assert errors[0]["type"] == "exception_during_inner_validation"
    assert errors[0]["details"] == "tuple index out of range"


def test_malformed_json_gets_aiohttps_500(comfy_server: ComfyTestServer) -> None:
    response = requests.post(
        f"{comfy_server.url}/prompt",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert response.status_code == 500
    assert response.text == CALLS["malformed JSON body"]["response"]


# --------------------------------------------------------------------------- failures


def test_unreadable_image_fails_like_the_transcript(comfy_server: ComfyTestServer) -> None:
    upload(comfy_server, "corrupt.png", b"this is not an image " * 8)
    with socket_of(comfy_server) as ws:
        prompt_id, messages = run_to_idle(comfy_server, ws, CORRUPT)

    recorded = WS["runtime failure (corrupt input image)"]
    assert types(messages) == types(recorded)
    error, expected = messages[6]["data"], recorded[6]["data"]
    assert list(error) == list(expected)
    assert error["exception_type"] == "PIL.UnidentifiedImageError"
    path = comfy_server.input_dir / "corrupt.png"
    assert error["exception_message"] == f"cannot identify image file '{path}'\n"
    assert (error["node_id"], error["executed"]) == ("1", [])
    assert error["current_inputs"] == {"image": ["corrupt.png"]}
    assert sorted(error["current_outputs"]) == sorted(expected["current_outputs"])
    entry = history_entry(comfy_server, prompt_id)
    assert entry["status"]["status_str"] == "error"
    assert entry["status"]["completed"] is False
    assert [m[0] for m in entry["status"]["messages"]][-1] == "execution_error"
    assert (entry["outputs"], entry["meta"]) == ({}, {})


def test_fail_behaviour_errors_at_the_sampler(comfy_server: ComfyTestServer) -> None:
    upload(comfy_server, "probe_input.png", png_bytes())
    comfy_server.behaviour = "fail"
    with socket_of(comfy_server) as ws:
        prompt_id, messages = run_to_idle(comfy_server, ws, KLEIN)

    assert types(messages)[-3:] == ["execution_error", "status", "executing"]
    error = messages[-3]["data"]
    expected = WS["runtime failure (Klein graph, placeholder weights)"][6]["data"]
    assert list(error) == list(expected)
    assert (error["node_id"], error["node_type"]) == ("75:64", "SamplerCustomAdvanced")
    assert "75:64" not in error["executed"]
    assert "75:63" in error["executed"]
    assert history_entry(comfy_server, prompt_id)["status"]["status_str"] == "error"


def test_fail_behaviour_without_sampler_errors_before_the_save(
    comfy_server: ComfyTestServer,
) -> None:
    upload(comfy_server, "probe_input.png", png_bytes())
    comfy_server.behaviour = "fail"
    with socket_of(comfy_server) as ws:
        _, messages = run_to_idle(comfy_server, ws, GRAPH_A)

    error = next(m["data"] for m in messages if m["type"] == "execution_error")
    assert (error["node_id"], error["node_type"], error["executed"]) == (
        "2",
        "ImageScaleToTotalPixels",
        ["1"],
    )


def test_stall_runs_until_interrupted(comfy_server: ComfyTestServer) -> None:
    upload(comfy_server, "probe_input.png", png_bytes())
    comfy_server.behaviour = "stall"
    with socket_of(comfy_server) as ws:
        prompt_id = queue(comfy_server, GRAPH_A)
        read_until(ws, lambda m: m["type"] == "executing" and m["data"]["node"] == "2")
        running = get_json(comfy_server, "/queue")["queue_running"]
        assert [item[1] for item in running] == [prompt_id]
        interrupted = requests.post(f"{comfy_server.url}/interrupt", json={}, timeout=5)
        assert (interrupted.status_code, interrupted.text) == (200, "")
        messages = until_idle(ws, prompt_id)

    assert types(messages)[-3:] == ["execution_interrupted", "status", "executing"]
    data = messages[-3]["data"]
    assert list(data) == ["prompt_id", "node_id", "node_type", "executed", "timestamp"]
    assert (data["node_id"], data["node_type"], data["executed"]) == (
        "2",
        "ImageScaleToTotalPixels",
        ["1"],
    )
    status = history_entry(comfy_server, prompt_id)["status"]
    assert (status["status_str"], status["completed"]) == ("error", False)
    assert status["messages"][-1][0] == "execution_interrupted"
    assert comfy_server.interrupts == 1


def test_queue_delete_removes_a_pending_prompt(comfy_server: ComfyTestServer) -> None:
    upload(comfy_server, "probe_input.png", png_bytes())
    comfy_server.behaviour = "stall"
    with socket_of(comfy_server) as ws:
        first = queue(comfy_server, GRAPH_A)
        read_until(ws, lambda m: m["type"] == "executing" and m["data"]["node"] == "2")
        second = queue(comfy_server, GRAPH_B)
        assert [i[1] for i in get_json(comfy_server, "/queue")["queue_pending"]] == [second]
        assert get_json(comfy_server, "/prompt") == {"exec_info": {"queue_remaining": 2}}
        deleted = requests.post(f"{comfy_server.url}/queue", json={"delete": [second]}, timeout=5)
        assert deleted.status_code == 200
        assert get_json(comfy_server, "/queue")["queue_pending"] == []
        requests.post(f"{comfy_server.url}/interrupt", json={"prompt_id": first}, timeout=5)
        until_idle(ws, first)

    assert get_json(comfy_server, f"/history/{second}") == {}


def test_drop_socket_cuts_the_socket_and_still_finishes(comfy_server: ComfyTestServer) -> None:
    upload(comfy_server, "probe_input.png", png_bytes())
    comfy_server.behaviour = "drop_socket"
    with socket_of(comfy_server) as ws:
        prompt_id = queue(comfy_server, GRAPH_A)
        seen = types_until_closed(ws)
    assert "executing" in seen
    assert "execution_success" not in seen

    deadline = time.monotonic() + TIMEOUT_S
    while not get_json(comfy_server, f"/history/{prompt_id}") and time.monotonic() < deadline:
        time.sleep(0.02)
    entry = history_entry(comfy_server, prompt_id)
    assert entry["status"]["status_str"] == "success"
    assert entry["outputs"]["3"]["images"][0]["filename"] == "scaled_00001_.png"


def test_slow_history_is_empty_twice_after_completion(comfy_server: ComfyTestServer) -> None:
    upload(comfy_server, "probe_input.png", png_bytes())
    comfy_server.behaviour = "slow_history"
    with socket_of(comfy_server) as ws:
        prompt_id, _ = run_to_idle(comfy_server, ws, GRAPH_A)

    reads = [get_json(comfy_server, f"/history/{prompt_id}") for _ in range(3)]
    assert reads[:2] == [{}, {}]
    assert reads[2][prompt_id]["status"]["status_str"] == "success"


def test_stop_mid_run_drops_sockets_and_refuses_connections(
    comfy_server: ComfyTestServer,
) -> None:
    upload(comfy_server, "probe_input.png", png_bytes())
    comfy_server.behaviour = "stall"
    with socket_of(comfy_server) as ws:
        queue(comfy_server, GRAPH_A)
        read_until(ws, lambda m: m["type"] == "executing" and m["data"]["node"] == "2")
        comfy_server.stop()
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            ws.recv()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{comfy_server.url}/system_stats", timeout=5)


# --------------------------------------------------------------------------- small routes


def test_view_history_and_control_routes(comfy_server: ComfyTestServer) -> None:
    missing = requests.get(
        f"{comfy_server.url}/view",
        params={"filename": "nope.png", "subfolder": "", "type": "output"},
        timeout=5,
    )
    assert (missing.status_code, missing.content) == (404, b"")
    assert get_json(comfy_server, "/history/00000000-0000-0000-0000-000000000000") == {}
    upload(comfy_server, "probe_input.png", png_bytes())
    with socket_of(comfy_server) as ws:
        ids = [run_to_idle(comfy_server, ws, body)[0] for body in (GRAPH_A, GRAPH_A, GRAPH_B)]
    assert list(get_json(comfy_server, "/history?max_items=2")) == ids[1:]
    assert list(get_json(comfy_server, "/history")) == ids
    for path, body in (("/interrupt", {}), ("/free", {"unload_models": True, "free_memory": True})):
        response = requests.post(f"{comfy_server.url}{path}", json=body, timeout=5)
        assert (response.status_code, response.text) == (200, "")
    assert comfy_server.interrupts == 1
    assert ("POST", "/free") in comfy_server.calls


def test_websocket_without_client_id_is_given_a_sid(comfy_server: ComfyTestServer) -> None:
    ws = websocket.create_connection(f"ws://127.0.0.1:{comfy_server.port}/ws", timeout=5)
    try:
        first = json.loads(ws.recv())
    finally:
        ws.close()
    assert first["type"] == "status"
    assert len(first["data"]["sid"]) == 32


def test_command_line_serves_in_the_foreground(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    command = [
        sys.executable,
        "-m",
        "devtools.comfy_standin",
        "--port",
        "0",
        "--root",
        str(tmp_path),
    ]
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        url = banner.split(" on ", 1)[1].split(" ", 1)[0]
        stats = requests.get(f"{url}/system_stats", timeout=5)
        assert stats.json()["system"]["comfyui_version"] == "0.33.0"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=TIMEOUT_S)
        if process.stdout is not None:
            process.stdout.close()
    assert process.returncode == 0
    assert (tmp_path / "input").is_dir()
