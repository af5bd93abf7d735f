"""Running `klein serve` as an operator does (a subprocess configured by its environment), the
GPU worker's stand-in behind the local RunPod endpoint, and the web app's side of the database.
Shared by the e2e tests; the fixtures are in conftest.py."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from PIL import Image
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from devtools.endpoint.server import EndpointServer
from handler.config import HandlerSettings
from orchestrator.settings import KLEIN_TEMPLATE_ID, Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
POLL_S = 0.05
# A held runner gives up after this long, so a test that never releases it cannot hang a thread.
RUNNER_HOLD_S = 40.0
SHORT_TIMINGS = {
    "SWEEP_INTERVAL_S": "0.5",
    "LEASE_S": "2",
    "HEARTBEAT_INTERVAL_S": "0.5",
    "POLL_MIN_INTERVAL_S": "0.1",
    "POLL_MAX_INTERVAL_S": "0.5",
    "SHUTDOWN_GRACE_S": "2",
}
OUTPUT_SIZE = (96, 64)
INPUT_SIZE = (48, 48)


def png_b64(size: tuple[int, int], color: tuple[int, int, int]) -> str:
    """A small solid PNG, base64."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


OUTPUT_PNG = png_b64(OUTPUT_SIZE, (200, 60, 30))


class ScriptedRunner:
    """The GPU worker's stand-in behind the local endpoint: counts calls per prompt, answers a PNG
    (or the error scripted for that prompt), and blocks while `hold()` is in force."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._gate = threading.Event()
        self._gate.set()
        self.errors: dict[str, str] = {}

    def hold(self) -> None:
        """Keep every job IN_PROGRESS until release()."""
        self._gate.clear()

    def release(self) -> None:
        """Let held and later jobs finish."""
        self._gate.set()

    def calls(self, prompt: str | None = None) -> int:
        """Runs of jobs with this prompt (all runs when None)."""
        with self._lock:
            return self._calls[prompt] if prompt is not None else self._calls.total()

    def run(self, job_id: str, job_input: dict[str, Any]) -> dict[str, Any]:
        """The handler's contract: a PNG output dict, or {"error": ...}."""
        prompt = str(job_input.get("prompt"))
        with self._lock:
            self._calls[prompt] += 1
        if not self._gate.wait(RUNNER_HOLD_S):
            return {"error": "the test never released the runner"}
        if prompt in self.errors:
            return {"error": self.errors[prompt]}
        width, height = OUTPUT_SIZE
        return {
            "image": OUTPUT_PNG,
            "seed": 1,
            "prompt_id": "p",
            "width": width,
            "height": height,
        }


class ServiceProcess:
    """One `python -m orchestrator ...` process; its stdout and stderr go to `log_path`."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", *args],
                env=env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")

    def wait_answering(self, url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll GET `url` until it answers 200; fail with the log if the process dies first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(POLL_S)
        pytest.fail(f"{self.name} was not ready within {timeout_s:g} s")

    def kill(self) -> None:
        """SIGKILL: the process dies at whatever line it is on."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a bound (teardown)."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)


class KleinServe(ServiceProcess):
    """One `python -m orchestrator serve` process on a free port."""

    def __init__(
        self, worker_id: str, env: dict[str, str], log_path: Path, port: int | None = None
    ) -> None:
        self.worker_id = worker_id
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        args = ["serve", "--port", str(self.port)]
        super().__init__(f"klein serve {worker_id}", args, env, log_path)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll GET /readyz until it answers 200; fail with the log if the process dies first."""
        self.wait_answering(f"{self.base_url}/readyz", timeout_s)


def stop_all(processes: list[ServiceProcess]) -> None:
    """SIGTERM to every one at once, then SIGKILL to any still running after a bound (teardown
    of processes that need not stop in order)."""
    running = [p.process for p in processes if p.process.poll() is None]
    for process in running:
        process.terminate()
    for process in running:
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env() -> dict[str, str]:
    """This environment without any orchestrator or handler setting, so the host's own (a real
    COMFY_API_URL, say) cannot leak in."""
    fields = [*Settings.model_fields, *HandlerSettings.model_fields]
    names = {name.upper() for name in fields}
    env = {key: value for key, value in os.environ.items() if key.upper() not in names}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def serve_env(
    database_url: str, api_base: str, storage_dir: Path, worker_id: str
) -> dict[str, str]:
    """`klein serve`'s environment: the test database, a RunPod API, local storage, short
    timings; nothing from the host's own settings."""
    return (
        base_env()
        | SHORT_TIMINGS
        | {
            "DATABASE_URL": database_url,
            "RUNPOD_API_BASE": api_base,
            "RUNPOD_ENDPOINT_ID": "local",
            "LOCAL_STORAGE_DIR": str(storage_dir),
            "WORKER_ID": worker_id,
        }
    )


# --------------------------------------------------------------------------- the web app's side


def insert_job(url: str, prompt: str) -> tuple[str, str]:
    """A pending Klein work and its job, as the web app inserts them: (job_id, work_id)."""
    return insert_work(url, {"prompt": prompt, "image_base64": png_b64(INPUT_SIZE, (40, 90, 200))})


def insert_work(url: str, input_data: dict[str, Any]) -> tuple[str, str]:
    """A pending Klein work with this `input_data`, and its job: (job_id, work_id)."""
    work_id, job_id, user_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO works (id, user_id, template_id, input_data) VALUES (%s, %s, %s, %s)",
            (work_id, user_id, KLEIN_TEMPLATE_ID, Jsonb(input_data)),
        )
        conn.execute("INSERT INTO generation_jobs (id, work_id) VALUES (%s, %s)", (job_id, work_id))
    return str(job_id), str(work_id)


def execute(url: str, statement: str, params: tuple[Any, ...] = ()) -> None:
    """One statement, committed."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params)


def job_row(url: str, job_id: str) -> dict[str, Any]:
    """The job joined with its work: job columns as `job_*`, the work's as they are, plus
    `lease_over` (the lease has ended) and `file` (the output's files row, or None)."""
    with psycopg.connect(url) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT j.status AS job_status, j.attempts, j.retries, j.locked_by,"
            " j.runpod_job_id AS job_runpod,"
            " j.lease_expires_at <= now() AS lease_over, j.finished_at, w.*"
            " FROM generation_jobs j JOIN works w ON w.id = j.work_id WHERE j.id = %s",
            (job_id,),
        )
        row = cur.fetchone()
        assert row is not None, f"no job {job_id}"
        del row["input_data"]  # a base64 image: noise in a failure's "last seen"
        cur.execute("SELECT * FROM files WHERE id = %s", (row["output_file_id"],))
        row["file"] = cur.fetchone()
    return row


def wait_for(
    probe: Callable[[], Any], done: Callable[[Any], bool], what: str, timeout_s: float = 15.0
) -> Any:
    """Poll `probe` until `done(value)`; that value, or a failure naming `what` and the last one."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s:g} s: {what}; last seen: {value!r}")
        time.sleep(POLL_S)


def wait_for_job(
    url: str,
    job_id: str,
    done: Callable[[dict[str, Any]], bool],
    what: str,
    timeout_s: float = 15.0,
) -> dict[str, Any]:
    """The job's row once `done(row)` holds."""
    row: dict[str, Any] = wait_for(lambda: job_row(url, job_id), done, what, timeout_s)
    return row


def runpod_status(endpoint: EndpointServer, runpod_job_id: str) -> str:
    """The job's status as RunPod's REST API reports it."""
    answer = httpx.get(f"{endpoint.url}/status/{runpod_job_id}", timeout=5)
    answer.raise_for_status()
    return str(answer.json()["status"])


def supabase_webhook(job_id: str) -> dict[str, Any]:
    """What a Supabase Database Webhook posts on INSERT into generation_jobs."""
    return {
        "type": "INSERT",
        "table": "generation_jobs",
        "record": {"id": job_id},
        "schema": "public",
        "old_record": None,
    }
