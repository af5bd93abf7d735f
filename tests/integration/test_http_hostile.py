"""The HTTP face against senders that mean harm (docs/security.md): a completion webhook whose
RunPod id would steer our API key to another RunPod path or forge a log line, bodies shaped to
blow up the parser, and clients that trickle or hold connections. Real PostgreSQL, the local
RunPod endpoint (devtools/endpoint), and `klein serve` itself where the server's own limits
are what is tested."""

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from devtools.endpoint.config import EndpointConfig
from devtools.endpoint.server import EndpointServer
from orchestrator.errors import Permanent
from orchestrator.runpod import RunPodClient, runpod_http
from tests.integration.faultkit import job_state
from tests.integration.flowkit import ScriptedWorker
from tests.integration.test_http import supabase_body
from tests.integration.test_webhook_delivery import (
    completed_body,
    one_slot_taken,
    submit_then_post_webhook,
    with_webhooks,
)

# A RunPod id that, put into `/cancel/{id}` as it is, reaches the endpoint's /purge-queue
# (which drops every queued job) with our API key; and one that forges a log line.
HOSTILE_IDS = ["../purge-queue", "a\nb: job 1 completed"]


class Requests:
    """ASGI middleware for the RunPod endpoint double: every (method, path) the orchestrator's
    side asked of it (the worker's own job API aside)."""

    def __init__(self, app, seen: list[tuple[str, str]]):
        self.app = app
        self.seen = seen

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not scope["path"].startswith("/v2/local/job-"):
            self.seen.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)


@contextlib.contextmanager
def recording_endpoint(worker: ScriptedWorker) -> Iterator[tuple[EndpointServer, list]]:
    """A started local RunPod endpoint and the requests it gets."""
    endpoint = EndpointServer(EndpointConfig(endpoint_id="local"), worker)
    seen: list[tuple[str, str]] = []
    endpoint.app.add_middleware(Requests, seen=seen)
    endpoint.start()
    try:
        yield endpoint, seen
    finally:
        endpoint.stop()


def stray_webhook(url, openrouter_server, tmp_path, hostile_id: str, *, kept: bool):
    """Post a completion webhook naming `hostile_id` for a job whose RunPod job is another,
    its body kept (a slot free) or scanned (none free, and large). (the answer, the requests
    RunPod got, the job's row, the orchestrator's 'cancelled' orphans)."""
    release = threading.Event()
    padding = "A" * (200 * 1024) if not kept else ""

    def body(_recorded: str) -> dict:
        done = completed_body("x")
        return done | {"id": hostile_id, "output": done["output"] | {"pad": padding}}

    async def run(endpoint):
        if kept:
            started = with_webhooks(url, endpoint, openrouter_server, tmp_path)
        else:
            started = one_slot_taken(
                url, endpoint, openrouter_server, tmp_path, webhook_slot_wait_s=0.1
            )
        async with started as running:
            orchestrator = running if kept else running[0]
            job_id, answer = await submit_then_post_webhook(url, orchestrator, body)
            await asyncio.sleep(0.5)  # a stray's cancel runs in the background
            orphans = orchestrator.deps.metrics.registry.get_sample_value(
                "klein_orphan_runpod_jobs_total", {"action": "cancelled"}
            )
            return answer, job_state(url, job_id), orphans

    with recording_endpoint(ScriptedWorker(block=release)) as (endpoint, seen):
        try:
            answer, row, orphans = asyncio.run(run(endpoint))
        finally:
            release.set()
    return answer, seen, row, orphans


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "scanned"])
@pytest.mark.parametrize("hostile_id", HOSTILE_IDS, ids=["dot-dot", "newline"])
def test_a_webhook_whose_id_is_not_runpods_is_refused_and_reaches_no_runpod_path(
    migrated_url, openrouter_server, tmp_path, caplog, hostile_id, kept
):
    caplog.set_level(logging.INFO)
    answer, seen, row, orphans = stray_webhook(
        migrated_url, openrouter_server, tmp_path, hostile_id, kept=kept
    )
    assert answer.status_code == 422
    assert answer.json() == {
        "error": "malformed body: its id is not a RunPod job id (letters, digits and dashes)"
    }
    recorded = row["runpod_job_id"]
    allowed = {("POST", "/v2/local/run"), ("GET", f"/v2/local/status/{recorded}")}
    assert set(seen) <= allowed, seen  # no /cancel, no /purge-queue
    assert orphans is None  # nothing was taken for a stray to cancel
    assert not [r.getMessage() for r in caplog.records if "\n" in r.getMessage()]


# --------------------------------------------------------------------------- RunPod URLs


class PathRecorder(threading.Thread):
    """A RunPod-speaking HTTP/1.1 server on a raw socket: records each request line's target
    exactly as sent (no parser of ours to normalise it) and answers a cancelled job."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.targets: list[str] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v2"

    def run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                with conn:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        head += conn.recv(4096)
                    self.targets.append(head.split(b" ")[1].decode())
                    body = b'{"id": "x", "status": "CANCELLED"}'
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    )


@pytest.fixture
def recorder() -> Iterator[PathRecorder]:
    server = PathRecorder()
    server.start()
    yield server
    server.sock.close()


def call_runpod(base: str, endpoint_id: str, method: str, job_id: str) -> None:
    async def run() -> None:
        async with runpod_http(5) as http:
            client = RunPodClient(http, base, endpoint_id, "rp-key")
            await getattr(client, method)(job_id)

    asyncio.run(run())


@pytest.mark.parametrize("method", ["cancel", "status"])
def test_a_runpod_id_with_slashes_is_one_encoded_path_segment(recorder, method):
    call_runpod(recorder.base, "local", method, "a/../b")
    assert recorder.targets == [f"/v2/local/{method}/a%2F..%2Fb"]


def test_an_endpoint_id_with_slashes_is_one_encoded_path_segment(recorder):
    call_runpod(recorder.base, "end/../point", "cancel", "rp-1")
    assert recorder.targets == ["/v2/end%2F..%2Fpoint/cancel/rp-1"]


@pytest.mark.parametrize("job_id", ["..", ".", ""])
def test_a_runpod_id_that_urls_resolve_away_is_refused_before_any_request(recorder, job_id):
    with pytest.raises(Permanent, match="is not a RunPod id"):
        call_runpod(recorder.base, "local", "cancel", job_id)
    assert recorder.targets == []


# --------------------------------------------------------------------------- the server


@contextlib.contextmanager
def klein_serve(url: str, **env: str) -> Iterator[int]:
    """`klein serve --port 0` with env added: its port, until the block ends."""
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {
        "DATABASE_URL": url,
        "RUNPOD_ENDPOINT_ID": "x",
        "RUNPOD_API_BASE": "http://127.0.0.1:9/v2",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "serve", "--port", "0"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        serving = None
        while serving is None:
            line = process.stderr.readline()
            assert line, "klein serve ended before serving"
            serving = re.search(r"serving on http://127\.0\.0\.1:(\d+) ", line)
        yield int(serving[1])
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=30)
        finally:
            process.kill()


def answer_of(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 20 s pass)."""
    conn.settimeout(20)
    received = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := conn.recv(4096):
            received += chunk
    return received


def test_an_intake_body_trickled_in_is_cut_off_at_its_deadline(migrated_url):
    body = json.dumps(supabase_body("00000000-0000-0000-0000-000000000000")).encode()
    with (
        klein_serve(migrated_url, INTAKE_BODY_DEADLINE_S="0.5") as port,
        socket.create_connection(("127.0.0.1", port)) as conn,
    ):
        conn.sendall(
            b"POST /webhook/klein_i2i HTTP/1.1\r\nHost: klein\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        stop = threading.Event()

        def trickle() -> None:  # a byte every 0.2 s: the body would take minutes
            for byte in body:
                if stop.wait(0.2):
                    return
                with contextlib.suppress(OSError):
                    conn.sendall(bytes([byte]))

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            received = answer_of(conn)
        finally:
            stop.set()
            sender.join()
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert b"INTAKE_BODY_DEADLINE_S" in received


def test_connections_past_the_limit_are_answered_503_at_once(migrated_url):
    with klein_serve(migrated_url, HTTP_MAX_CONNECTIONS="3") as port:
        holders = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            time.sleep(0.2)  # the server has taken them (they send nothing)
            crowded = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        finally:
            for holder in holders:
                holder.close()
        time.sleep(0.2)
        freed = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    assert crowded.status_code == 503
    assert freed.status_code == 200
