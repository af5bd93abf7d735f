"""The worker-facing API at the protocol level: an HTTP client plays the runpod SDK's worker with
the exact requests rp_job.py, rp_http.py and rp_ping.py send (no worker process is started)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from devtools.endpoint import EndpointConfig, EndpointServer

INPUT = {"prompt": "make it blue"}


@pytest.fixture
def server() -> Iterator[EndpointServer]:
    config = EndpointConfig(endpoint_id="local", worker_poll_s=0.5, max_result_bytes=1_000)
    with EndpointServer(config, start_workers=False) as started:
        yield started


@pytest.fixture
def client(server: EndpointServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


@pytest.fixture
def worker(server: EndpointServer) -> Iterator[httpx.Client]:
    """The SDK's session: the worker key bare in Authorization."""
    headers = {"Authorization": server.config.worker_key}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:
        yield http


def submit(client: httpx.Client, **extra: object) -> str:
    return str(client.post("/run", json={"input": INPUT, **extra}).json()["id"])


def done(worker: httpx.Client, job_id: str, body: object, who: str = "w1") -> httpx.Response:
    """rp_http._transmit: the JSON text, sent as a form body."""
    return worker.post(
        f"/job-done/{who}/{job_id}?gpu=local&isStream=false",
        content=json.dumps(body),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


def test_job_take_gives_the_queued_job_and_then_204_once_the_poll_ends(client, worker):
    job_id = submit(client)
    taken = worker.get("/job-take/w1?gpu=local&job_in_progress=0")
    assert taken.status_code == 200
    assert taken.json() == {"id": job_id, "input": INPUT}
    assert client.get(f"/status/{job_id}").json()["workerId"] == "w1"
    assert worker.get("/job-take/w1?gpu=local&job_in_progress=1").status_code == 204


def test_the_batch_form_answers_a_list(client, worker):
    ids = [submit(client) for _ in range(3)]
    taken = worker.get("/job-take-batch/w1?gpu=local&batch_size=2&job_in_progress=0").json()
    assert [job["id"] for job in taken] == ids[:2]


def test_every_worker_route_needs_the_worker_key(client, server):
    with httpx.Client(base_url=server.url, headers={"Authorization": "wrong"}) as stranger:
        for path in ("/job-take/w1?gpu=local", "/job-stop/w1?gpu=local", "/ping/w1?gpu=local"):
            assert stranger.get(path).status_code == 401
        assert stranger.post("/job-done/w1/x?isStream=false", content="{}").status_code == 401


def test_cancel_puts_the_job_on_its_workers_stop_channel(client, worker):
    job_id = submit(client)
    worker.get("/job-take/w1?gpu=local")
    assert worker.get("/job-stop/w1?gpu=local").status_code == 204
    assert client.post(f"/cancel/{job_id}").json()["status"] == "CANCELLED"
    assert worker.get("/job-stop/w1?gpu=local").json() == {"jobsToStop": [job_id]}
    assert worker.get("/job-stop/w2?gpu=local").status_code == 204, "only the holder hears it"


def test_the_execution_timeout_stops_the_job_through_the_same_channel(client, worker):
    job_id = submit(client, policy={"executionTimeout": 300})
    worker.get("/job-take/w1?gpu=local")
    deadline = time.monotonic() + 5
    stop = worker.get("/job-stop/w1?gpu=local")
    while stop.status_code == 204 and time.monotonic() < deadline:
        stop = worker.get("/job-stop/w1?gpu=local")
    assert stop.json() == {"jobsToStop": [job_id]}
    assert client.get(f"/status/{job_id}").json()["status"] == "TIMED_OUT"


def test_progress_shows_while_running_then_the_result_ends_the_job(client, worker):
    job_id = submit(client)
    worker.get("/job-take/w1?gpu=local")
    assert done(worker, job_id, {"status": "IN_PROGRESS", "output": {"step": 2}}).is_success
    running = client.get(f"/status/{job_id}").json()
    assert (running["status"], running["output"]) == ("IN_PROGRESS", {"step": 2})
    assert done(worker, job_id, {"output": {"image": "b64"}}).is_success
    body = client.get(f"/status/{job_id}").json()
    assert (body["status"], body["output"]) == ("COMPLETED", {"image": "b64"})


def test_an_error_result_fails_the_job_and_a_result_from_another_worker_is_ignored(client, worker):
    job_id = submit(client)
    worker.get("/job-take/w1?gpu=local")
    done(worker, job_id, {"output": {"image": "forged"}}, who="w9")
    assert client.get(f"/status/{job_id}").json()["status"] == "IN_PROGRESS"
    done(worker, job_id, {"error": "Missing required parameter: image"})
    body = client.get(f"/status/{job_id}").json()
    assert (body["status"], body["error"]) == ("FAILED", "Missing required parameter: image")


def test_a_result_over_the_limit_is_refused_and_fails_the_job(client, worker):
    job_id = submit(client)
    worker.get("/job-take/w1?gpu=local")
    assert done(worker, job_id, {"output": "x" * 5_000}).status_code == 413
    body = client.get(f"/status/{job_id}").json()
    assert body["status"] == "FAILED"
    assert "over RunPod's 0.001 MB limit" in body["error"]


def test_a_worker_that_asked_for_refresh_gets_no_more_jobs(client, worker):
    first = submit(client)
    worker.get("/job-take/w1?gpu=local")
    done(worker, first, {"error": "ComfyUI is not reachable", "stopPod": True})
    second = submit(client)
    assert worker.get("/job-take/w1?gpu=local").status_code == 204
    assert worker.get("/job-take/w2?gpu=local").json()["id"] == second


def test_stream_parts_are_read_once_through_the_client_api(client, worker):
    job_id = submit(client)
    worker.get("/job-take/w1?gpu=local")
    worker.post(f"/job-stream/w1/{job_id}?isStream=true", content=json.dumps({"output": "a"}))
    assert client.get(f"/stream/{job_id}").json() == {
        "status": "IN_PROGRESS",
        "stream": [{"output": "a"}],
    }
    assert client.get(f"/stream/{job_id}").json()["stream"] == []


def test_ping_is_answered(worker, server):
    assert worker.get("/ping/w1?gpu=local&runpod_version=1.12.0").status_code == 200
    assert "w1" in server.endpoint.last_ping
