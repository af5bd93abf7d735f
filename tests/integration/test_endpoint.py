"""The local RunPod endpoint over real HTTP: statuses, outcomes, timeouts, cancel, expiry, webhook,
auth, rate limits, the worker bound, runsync, health and purge, with scripted in-process runners."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.endpoint import EndpointConfig, EndpointServer

REPO = Path(__file__).resolve().parents[2]
TEST_INPUT = json.loads((REPO / "handler" / "test_input.json").read_text())["input"]
WAIT_S = 5.0  # upper bound for a condition to come true; never a measured duration
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


class FakeClock:
    """Real monotonic time plus an offset the test moves forward (retention, TTL, rate limits)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class ScriptedRunner:
    """A JobRunner whose input says what to do: return `output`, `raise`, or `block` on a gate."""

    def __init__(self) -> None:
        self.started: queue.Queue[str] = queue.Queue()
        self.finished: queue.Queue[str] = queue.Queue()
        self._gates: dict[str, threading.Event] = {}
        self._progress: dict[str, dict] = {}
        self._lock = threading.Lock()

    def gate(self, name: str) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(name, threading.Event())

    def release_all(self) -> None:
        with self._lock:
            gates = list(self._gates.values())
        for gate in gates:
            gate.set()

    def run(self, job_id: str, job_input: dict[str, Any]) -> dict[str, Any]:
        self.started.put(job_id)
        try:
            return self._act(job_id, job_input)
        finally:
            self.finished.put(job_id)

    def _act(self, job_id: str, job_input: dict[str, Any]) -> dict[str, Any]:
        if "raise" in job_input:
            raise RuntimeError(job_input["raise"])
        if "block" in job_input:
            if "progress" in job_input:
                self._progress[job_id] = job_input["progress"]
            self.gate(job_input["block"]).wait(30)
            return {"released": job_input["block"]}
        return job_input["output"]

    def progress(self, job_id: str) -> dict | None:
        return self._progress.get(job_id)


@pytest.fixture
def runner() -> ScriptedRunner:
    return ScriptedRunner()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def start(runner: ScriptedRunner, clock: FakeClock) -> Iterator[Callable[..., httpx.Client]]:
    """`start(**config)`: an endpoint on a free port; returns a client with its URL as base."""
    servers: list[EndpointServer] = []
    clients: list[httpx.Client] = []

    def _start(job_runner: Any = None, **config: Any) -> httpx.Client:
        server = EndpointServer(EndpointConfig(**config), job_runner or runner, clock=clock)
        server.start()
        servers.append(server)
        headers = {"Authorization": f"Bearer {config['api_key']}"} if "api_key" in config else {}
        client = httpx.Client(base_url=server.url, headers=headers, timeout=WAIT_S * 2)
        client.server = server  # type: ignore[attr-defined]
        clients.append(client)
        return client

    yield _start
    runner.release_all()
    for client in clients:
        client.close()
    for server in servers:
        server.stop()


def submit(client: httpx.Client, job_input: dict, **extra: Any) -> str:
    response = client.post("/run", json={"input": job_input, **extra})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "IN_QUEUE"
    return response.json()["id"]


def wait_status(client: httpx.Client, job_id: str, wanted: set[str]) -> dict:
    deadline = time.monotonic() + WAIT_S
    while True:
        body = client.get(f"/status/{job_id}").json()
        if body.get("status") in wanted or time.monotonic() > deadline:
            return body
        time.sleep(0.01)


def next_started(runner: ScriptedRunner) -> str:
    return runner.started.get(timeout=WAIT_S)


def test_a_job_goes_from_queue_to_progress_to_completed_with_its_output(start, runner):
    client = start()
    job_id = submit(client, {"block": "a", "progress": {"step": 2, "steps": 4}})
    assert next_started(runner) == job_id
    running = client.get(f"/status/{job_id}").json()
    assert running["status"] == "IN_PROGRESS"
    assert running["output"] == {"step": 2, "steps": 4}, "progress shows as output while running"
    runner.gate("a").set()
    done = wait_status(client, job_id, TERMINAL)
    assert done["status"] == "COMPLETED"
    assert done["output"] == {"released": "a"}
    assert done["id"] == job_id
    assert done["delayTime"] >= 0
    assert done["executionTime"] >= 0


def test_a_handler_error_dict_fails_the_job_with_that_sentence(start):
    client = start()
    job_id = submit(client, {"output": {"error": "Missing required parameter: image"}})
    body = wait_status(client, job_id, TERMINAL)
    assert body["status"] == "FAILED"
    assert body["error"] == "Missing required parameter: image"
    assert "output" not in body


def test_the_rest_of_an_error_dict_stays_as_output_without_refresh_worker(start):
    client = start()
    output = {"error": "ComfyUI is gone", "refresh_worker": True, "detail": 7}
    body = wait_status(client, submit(client, {"output": output}), TERMINAL)
    assert body["status"] == "FAILED"
    assert body["error"] == "ComfyUI is gone"
    assert body["output"] == {"detail": 7}


def test_a_runner_exception_fails_the_job_with_the_message(start):
    client = start()
    body = wait_status(client, submit(client, {"raise": "boom in the runner"}), TERMINAL)
    assert body["status"] == "FAILED"
    error = json.loads(body["error"])
    assert error["error_message"] == "boom in the runner"
    assert "RuntimeError" in error["error_type"]


def test_past_execution_timeout_the_job_is_timed_out_and_its_late_result_discarded(start, runner):
    client = start()
    job_id = submit(client, {"block": "slow"}, policy={"executionTimeout": 200})
    assert next_started(runner) == job_id
    assert wait_status(client, job_id, TERMINAL)["status"] == "TIMED_OUT"
    runner.gate("slow").set()
    assert runner.finished.get(timeout=WAIT_S) == job_id
    body = client.get(f"/status/{job_id}").json()
    assert body["status"] == "TIMED_OUT"
    assert "output" not in body


def test_a_cancelled_queued_job_never_runs(start, runner):
    client = start(workers=1)
    first = submit(client, {"block": "first"})
    queued = submit(client, {"output": {"ran": True}})
    assert next_started(runner) == first
    cancelled = client.post(f"/cancel/{queued}")
    assert cancelled.json() == {"id": queued, "status": "CANCELLED"}
    runner.gate("first").set()
    later = submit(client, {"output": {"later": True}})
    assert wait_status(client, later, TERMINAL)["status"] == "COMPLETED"
    assert next_started(runner) == later, "the cancelled job was skipped, not run"
    assert client.get(f"/status/{queued}").json()["status"] == "CANCELLED"


def test_a_cancelled_running_job_ends_at_once_and_frees_its_worker(start, runner):
    client = start(workers=1)
    job_id = submit(client, {"block": "held"})
    assert next_started(runner) == job_id
    assert client.post(f"/cancel/{job_id}").json()["status"] == "CANCELLED"
    assert client.get(f"/status/{job_id}").json()["status"] == "CANCELLED"
    other = submit(client, {"output": {"ok": 1}})
    assert wait_status(client, other, TERMINAL)["status"] == "COMPLETED", "worker freed"
    runner.gate("held").set()
    finished = {runner.finished.get(timeout=WAIT_S), runner.finished.get(timeout=WAIT_S)}
    assert finished == {job_id, other}, "the cancelled runner has returned by now"
    assert client.get(f"/status/{job_id}").json()["status"] == "CANCELLED"


def test_cancelling_a_finished_job_keeps_its_status(start):
    client = start()
    job_id = submit(client, {"output": {"ok": 1}})
    wait_status(client, job_id, TERMINAL)
    assert client.post(f"/cancel/{job_id}").json() == {"id": job_id, "status": "COMPLETED"}


def test_unknown_jobs_are_404_for_status_and_cancel(start):
    client = start()
    for response in (client.get("/status/nope"), client.post("/cancel/nope")):
        assert response.status_code == 404
        assert "error" in response.json()


def test_results_expire_after_the_retention_time(start, clock):
    client = start(result_retention_s=60)
    job_id = submit(client, {"output": {"ok": 1}})
    wait_status(client, job_id, TERMINAL)
    clock.advance(59)
    assert client.get(f"/status/{job_id}").json()["status"] == "COMPLETED"
    clock.advance(2)
    expired = client.get(f"/status/{job_id}")
    assert expired.status_code == 404
    assert "error" in expired.json()


def test_a_job_still_queued_past_its_ttl_is_dropped_and_never_runs(start, runner, clock):
    client = start(workers=1)
    first = submit(client, {"block": "first"})
    stale = submit(client, {"output": {"ran": True}}, policy={"ttl": 10_000})
    assert next_started(runner) == first
    clock.advance(11)
    assert client.get(f"/status/{stale}").status_code == 404
    runner.gate("first").set()
    later = submit(client, {"output": {"later": True}})
    assert wait_status(client, later, TERMINAL)["status"] == "COMPLETED"
    assert next_started(runner) == later


def test_a_running_job_past_its_ttl_is_forgotten_and_frees_its_worker(start, runner, clock):
    client = start(workers=1)
    job_id = submit(client, {"block": "long"}, policy={"ttl": 10_000})
    assert next_started(runner) == job_id
    clock.advance(11)
    assert client.get(f"/status/{job_id}").status_code == 404
    other = submit(client, {"output": {"ok": 1}})
    assert wait_status(client, other, TERMINAL)["status"] == "COMPLETED"


@pytest.fixture
def receiver() -> Iterator[tuple[str, queue.Queue[dict], list[int]]]:
    """A webhook receiver: (url, received bodies, status codes to answer first)."""
    received: queue.Queue[dict] = queue.Queue()
    answers: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.put(json.loads(self.rfile.read(length)))
            self.send_response(answers.pop(0) if answers else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield (
        f"http://127.0.0.1:{server.server_address[1]}/runpod/webhook/secret-token",
        received,
        answers,
    )
    server.shutdown()
    server.server_close()


def test_the_webhook_receives_the_final_status_body(start, receiver):
    url, received, _ = receiver
    client = start()
    job_id = submit(client, {"output": {"image": "abc"}}, webhook=url)
    delivered = received.get(timeout=WAIT_S)
    assert delivered == client.get(f"/status/{job_id}").json()
    assert delivered["status"] == "COMPLETED"
    assert delivered["output"] == {"image": "abc"}


def test_a_failed_webhook_delivery_is_retried(start, receiver):
    url, received, answers = receiver
    answers.append(500)
    client = start(webhook_retry_delay_s=0.01)
    job_id = submit(client, {"output": {"error": "bad"}}, webhook=url)
    first, second = received.get(timeout=WAIT_S), received.get(timeout=WAIT_S)
    assert first == second
    assert second["id"] == job_id
    assert second["status"] == "FAILED"


def test_with_an_api_key_every_route_needs_it(start):
    client = start(api_key="s3cret")
    job_id = submit(client, {"output": {}})
    bare = httpx.Client(base_url=str(client.base_url))
    with bare:
        for response in (
            bare.get(f"/status/{job_id}"),
            bare.post("/run", json={"input": {}}),
            bare.get("/health"),
            bare.get(f"/status/{job_id}", headers={"Authorization": "Bearer wrong"}),
        ):
            assert response.status_code == 401
            assert "error" in response.json()
        bare_key = bare.get(f"/status/{job_id}", headers={"Authorization": "s3cret"})
    assert bare_key.status_code == 200, "RunPod also takes the key without 'Bearer'"
    assert client.get("/health").status_code == 200


def test_injected_429s_answer_the_next_requests_of_that_route_only(start):
    client = start()
    job_id = submit(client, {"output": {}})
    client.server.endpoint.inject(status_code=429, times=2, route="status")
    assert client.post("/run", json={"input": {"output": {}}}).status_code == 200
    codes = [client.get(f"/status/{job_id}").status_code for _ in range(3)]
    assert codes == [429, 429, 200]


def test_the_status_rate_limit_answers_429_until_tokens_refill(start, clock):
    client = start(status_limit_per_10s=3)
    job_id = submit(client, {"output": {}})
    codes = [client.get(f"/status/{job_id}").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    clock.advance(4)
    assert client.get(f"/status/{job_id}").status_code == 200


def test_an_unknown_endpoint_id_is_404(start):
    client = start(endpoint_id="mine")
    response = client.get(str(client.server.api_base) + "/other/health")
    assert response.status_code == 404


def test_a_body_without_input_is_400(start):
    client = start()
    for body in ({"prompt": "x"}, {"input": {}, "webhook": "ftp://x"}, {"input": {}, "policy": 5}):
        response = client.post("/run", json=body)
        assert response.status_code == 400
        assert "error" in response.json()


@pytest.mark.parametrize(
    "body",
    [
        b'{"input": {"prompt": "\\ud800"}}',  # a lone surrogate: no worker could be sent it
        b'{"input": {"prompt": "p", "cfg": NaN}}',
        b'{"input": {"prompt": "p", "steps": Infinity}}',
        b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=["lone-surrogate", "nan", "infinity", "deep"],
)
def test_a_body_that_is_not_json_a_worker_can_take_is_400(start, body):
    """A lone surrogate was taken and then failed at job-take (the job waited out its execution
    timeout); NaN and Infinity reached the worker as null; deep nesting was a 500."""
    client = start()
    response = client.post("/run", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"error": "the request body must be JSON"}


def test_a_body_over_runpods_size_limit_is_413(start):
    client = start(max_run_bytes=1_000)
    response = client.post("/run", json={"input": {"image_base64": "A" * 2_000}})
    assert response.status_code == 413
    assert "error" in response.json()


def test_two_workers_run_two_jobs_and_the_third_waits_in_fifo_order(start, runner):
    client = start(workers=2)
    ids = [submit(client, {"block": name}) for name in ("a", "b", "c")]
    assert {next_started(runner), next_started(runner)} == set(ids[:2])
    assert client.get(f"/status/{ids[2]}").json()["status"] == "IN_QUEUE"
    health = client.get("/health").json()
    assert health["jobs"]["inProgress"] == 2
    assert health["jobs"]["inQueue"] == 1
    assert health["workers"] == {"idle": 0, "running": 2}
    runner.gate("a").set()
    assert next_started(runner) == ids[2]
    runner.gate("b").set()
    runner.gate("c").set()
    assert all(wait_status(client, i, TERMINAL)["status"] == "COMPLETED" for i in ids)


def test_runsync_answers_with_the_result(start):
    client = start()
    response = client.post("/runsync", json={"input": {"output": {"seed": 5}}})
    body = response.json()
    assert body["status"] == "COMPLETED"
    assert body["output"] == {"seed": 5}
    assert body["id"].startswith("sync-")


def test_runsync_answers_in_progress_when_the_wait_ends_first(start, runner):
    client = start(sync_wait_s=0.2)
    body = client.post("/runsync", json={"input": {"block": "long"}}).json()
    assert body["status"] in {"IN_QUEUE", "IN_PROGRESS"}
    runner.gate("long").set()
    assert wait_status(client, body["id"], TERMINAL)["status"] == "COMPLETED"


def test_health_counts_jobs_and_workers(start, runner):
    client = start(workers=1)
    wait_status(client, submit(client, {"output": {"ok": 1}}), TERMINAL)
    wait_status(client, submit(client, {"raise": "x"}), TERMINAL)
    running = submit(client, {"block": "h"})
    submit(client, {"output": {}})
    next_started(runner)
    next_started(runner)
    assert next_started(runner) == running
    assert client.get("/health").json() == {
        "jobs": {"completed": 1, "failed": 1, "inProgress": 1, "inQueue": 1, "retried": 0},
        "workers": {"idle": 0, "running": 1},
    }


def test_purge_queue_removes_queued_jobs_and_leaves_the_running_one(start, runner):
    client = start(workers=1)
    running = submit(client, {"block": "p"})
    queued = [submit(client, {"output": {}}) for _ in range(2)]
    assert next_started(runner) == running
    assert client.post("/purge-queue").json() == {"removed": 2, "status": "completed"}
    assert all(client.get(f"/status/{i}").status_code == 404 for i in queued)
    assert client.get(f"/status/{running}").json()["status"] == "IN_PROGRESS"
    runner.gate("p").set()
    assert wait_status(client, running, TERMINAL)["status"] == "COMPLETED"


# The real handler behind the endpoint (worker subprocesses): tests/integration/test_sdk_workers.py
