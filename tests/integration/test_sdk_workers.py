"""`klein endpoint`'s worker subprocesses: real `python -m handler` processes running the runpod
SDK's job loop against the endpoint's worker-facing API, and the ComfyUI protocol server."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import runpod

from devtools.endpoint import EndpointConfig, EndpointServer

REPO = Path(__file__).resolve().parents[2]
TEST_INPUT = json.loads((REPO / "handler" / "test_input.json").read_text())["input"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
START_S = 60.0  # bound for a worker process to start and finish a job (2 shared cores)
STOP_S = 1.5  # "within about a second": the SDK's stop, the handler's 0.5 s check, the interrupt
UNREACHABLE = (
    "ComfyUI is not reachable at {url}; start ComfyUI there or set COMFY_API_URL to a running "
    "ComfyUI"
)


def handler_env(comfy_server: Any) -> dict[str, str]:
    """The workers' environment: this ComfyUI, short handler deadlines, quick progress."""
    return {
        "COMFY_API_URL": comfy_server.url,
        "COMFY_ROOT": str(comfy_server.root),
        "COMFY_WORKFLOW": "flux2_klein_9b_i2i",
        "COMFY_WORKFLOWS_DIR": str(REPO / "comfy_workflows"),
        "COMFY_JOB_TIMEOUT_S": "20",
        "COMFY_POLL_INTERVAL_S": "0.05",
        "COMFY_STARTUP_TIMEOUT_S": "2",
        "PROGRESS_INTERVAL_S": "0",
    }


@pytest.fixture
def start(comfy_server) -> Iterator[Callable[..., EndpointServer]]:
    """`start(**config)`: an endpoint on a free port with worker subprocesses; stopped after."""
    servers: list[EndpointServer] = []
    clients: list[httpx.Client] = []

    def _start(**config: Any) -> EndpointServer:
        config = {"endpoint_id": "local", "worker_poll_s": 2.0, **config}
        server = EndpointServer(EndpointConfig(**config), worker_env=handler_env(comfy_server))
        server.start()
        servers.append(server)
        server.http = httpx.Client(base_url=server.url, timeout=10)  # type: ignore[attr-defined]
        clients.append(server.http)  # type: ignore[attr-defined]
        return server

    yield _start
    for http in clients:
        http.close()
    for server in servers:
        server.stop()


def client(server: EndpointServer) -> httpx.Client:
    http: httpx.Client = server.http  # type: ignore[attr-defined]
    return http


def submit(http: httpx.Client, job_input: dict, **extra: Any) -> str:
    response = http.post("/run", json={"input": job_input, **extra})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def until(condition: Callable[[], Any], timeout_s: float = START_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def final(http: httpx.Client, job_id: str) -> dict:
    def ended() -> dict | None:
        body = http.get(f"/status/{job_id}").json()
        return body if body["status"] in TERMINAL else None

    body = until(ended)
    assert body, f"job {job_id} did not end"
    return body


def running_on_comfy(http: httpx.Client, job_id: str, comfy_server) -> None:
    assert until(lambda: ("POST", "/prompt") in comfy_server.calls), "the prompt never came"
    assert http.get(f"/status/{job_id}").json()["status"] == "IN_PROGRESS"


def test_the_runpod_sdks_own_client_runs_a_job_through_a_worker_process(start, monkeypatch):
    server = start()
    monkeypatch.setattr(runpod, "endpoint_url_base", server.api_base)
    job = runpod.Endpoint("local", api_key="local").run({**TEST_INPUT, "seed": 7})
    output = job.output(timeout=int(START_S))
    assert job.status() == "COMPLETED", output
    assert output["seed"] == 7
    assert output["image"]


def test_progress_shows_in_status_while_the_job_runs(start, comfy_server):
    comfy_server.node_delay_s = 0.2  # slow enough for a poll to see the run in progress
    http = client(start())
    job_id = submit(http, {**TEST_INPUT, "megapixels": 0.5})
    seen: list[dict] = []

    def ended() -> bool:
        body = http.get(f"/status/{job_id}").json()
        if body["status"] == "IN_PROGRESS" and "output" in body:
            seen.append(body["output"])
        return body["status"] in TERMINAL

    assert until(ended)
    assert http.get(f"/status/{job_id}").json()["status"] == "COMPLETED"
    assert seen, "progress_update's reports show as output while the job runs"
    assert all(isinstance(report, dict) for report in seen)


def test_a_cancelled_job_interrupts_comfyui_within_a_second(start, comfy_server):
    comfy_server.behaviour = "stall"
    http = client(start())
    job_id = submit(http, TEST_INPUT)
    running_on_comfy(http, job_id, comfy_server)
    assert http.post(f"/cancel/{job_id}").json()["status"] == "CANCELLED"
    assert until(lambda: comfy_server.interrupts, STOP_S), "ComfyUI was not interrupted"
    removed = until(lambda: ("POST", "/queue") in comfy_server.calls, STOP_S)
    assert removed, "the prompt is removed from ComfyUI's queue"
    assert http.get(f"/status/{job_id}").json()["status"] == "CANCELLED"


def test_an_execution_timeout_interrupts_comfyui_within_a_second(start, comfy_server):
    comfy_server.behaviour = "stall"
    http = client(start())
    job_id = submit(http, TEST_INPUT, policy={"executionTimeout": 3000})
    running_on_comfy(http, job_id, comfy_server)
    assert final(http, job_id)["status"] == "TIMED_OUT"
    assert until(lambda: comfy_server.interrupts, STOP_S), "ComfyUI was not interrupted"


def test_a_worker_asking_for_refresh_is_replaced_and_the_next_job_is_served(start, comfy_server):
    url = comfy_server.url
    comfy_server.stop()
    server = start()
    http = client(server)
    first = final(http, submit(http, TEST_INPUT))
    assert first["status"] == "FAILED"
    assert first["error"] == UNREACHABLE.format(url=url)
    assert first["workerId"] == "local-worker-1"
    assert until(lambda: "local-worker-2" in server.worker_pids), "no new worker started"
    second = final(http, submit(http, {"prompt": "make it blue"}))
    assert second["error"] == "Missing required parameter: image"
    assert second["workerId"] == "local-worker-2"


def test_a_result_over_the_size_limit_fails_the_job_saying_so(start):
    http = client(start(max_result_bytes=1_000))
    body = final(http, submit(http, TEST_INPUT))
    assert body["status"] == "FAILED"
    assert body["error"].startswith("the job's result is ")
    assert "over RunPod's 0.001 MB limit" in body["error"]


def test_a_worker_that_dies_is_restarted_and_no_process_outlives_the_endpoint(start):
    server = start()
    assert until(lambda: server.worker_pids.get("local-worker-1"))
    os.killpg(server.worker_pids["local-worker-1"], 9)
    assert until(lambda: "local-worker-2" in server.worker_pids), "the dead worker was not replaced"
    pid = server.worker_pids["local-worker-2"]
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def test_a_job_whose_worker_dies_fails_saying_so(start, comfy_server):
    comfy_server.behaviour = "stall"
    server = start()
    http = client(server)
    job_id = submit(http, TEST_INPUT)
    running_on_comfy(http, job_id, comfy_server)
    os.killpg(server.worker_pids["local-worker-1"], 9)
    body = final(http, job_id)
    assert body["status"] == "FAILED"
    assert body["error"] == "the worker running the job exited (exit status -9)"
