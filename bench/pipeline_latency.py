"""Pipeline latency: what the orchestrator adds to one job, end to end, on one machine.

`python -m orchestrator serve` runs as a subprocess, configured only by its environment
(DATABASE_URL: a fresh migrated database; RUNPOD_API_BASE: the local RunPod endpoint of
`devtools.endpoint`, run here on a thread; RUNPOD_ENDPOINT_ID=local; LOCAL_STORAGE_DIR: a
temporary folder; no OPENROUTER_API_KEY, so no translation or title call). Behind the endpoint an
instant runner answers each job with a small PNG in the handler's output shape, after
`--runner-s` seconds plus a uniform draw from [0, `--runner-jitter-s`) (default 0 and 0: no GPU
time at all, so what is left is the orchestrator's).

Sequential: a job is inserted as the web app inserts it (works + generation_jobs in one
transaction), the Supabase Database Webhook is posted to `POST /webhook/klein_i2i`, and the clock
runs from the insert's commit until `works.status = 'completed'` (the database polled every 5 ms).
Reported: p50/p95/max over the jobs, and the stages from the rows' own timestamps (created ->
taken -> submitted -> completed), where "submitted -> completed" holds the runner's time and the
wait for the poll that sees it finished. Batch: `--batch` jobs inserted in one transaction; their
throughput from that commit until the last is completed, and each one's created -> completed.
With a timed runner, "added beyond the runner" is created -> completed less the runner's own time
for that job: what the orchestrator (claiming, submitting, polling, storing) adds to the GPU time.

The n8n workflow this replaces waited a fixed 5 s after submitting before its first poll, and 5 s
between polls (seed README, "Latency Breakdown"); the orchestrator polls at once, then every
max(POLL_MIN_INTERVAL_S, age / 10) seconds, and wakes at once on RunPod's completion webhook
when PUBLIC_BASE_URL is set (`--runpod-webhook`).

Correctness: every job completed, submitted once (`attempts = 1`, one runner call), with its files
row and its stored PNG; otherwise the exit status is 1. Every wait has a deadline (`--timeout-s`);
the database, the endpoint and klein serve are removed or stopped even on error. Run from the
repository root (PostgreSQL at 127.0.0.1:5432, trust auth):

    .venv/bin/python -m bench.pipeline_latency                     # klein serve's defaults
    .venv/bin/python -m bench.pipeline_latency --sequential 0 --max-in-flight 200
    .venv/bin/python -m bench.pipeline_latency --runner-s 20 --runner-jitter-s 20 \
        --sequential 0 --warmup 0 --batch 16 --endpoint-workers 16 --timeout-s 120
    (the same with --runpod-webhook)
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from PIL import Image

from bench.benchkit import (
    DEFAULT_SERVER,
    BenchError,
    NewJob,
    insert_jobs,
    new_jobs,
    percentile,
    print_table,
    scratch_database,
    server_version,
    spread,
)
from devtools.endpoint.config import EndpointConfig
from devtools.endpoint.server import EndpointServer
from handler.config import HandlerSettings
from orchestrator.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0  # SHUTDOWN_GRACE_S (10 s by default) and a margin
HTTP_TIMEOUT_S = 5.0
OUTPUT_SIZE = (64, 48)
FINISHED = ("completed", "failed", "cancelled")


def png_b64(size: tuple[int, int]) -> str:
    """A small solid PNG, base64: what the handler returns as `output.image`."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


OUTPUT_PNG = png_b64(OUTPUT_SIZE)
INPUT_DATA = {"prompt": "Change the background to a beach", "image_base64": png_b64((32, 32))}


class InstantRunner:
    """The GPU worker's stand-in behind the local endpoint: the handler's output after
    `delay_s` plus a uniform draw from [0, jitter_s), with each run's time kept by RunPod job id
    (each job must run once)."""

    def __init__(self, delay_s: float, jitter_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.jitter_s = jitter_s
        self._random = random.Random(20260211)  # the same draws on every run
        self._lock = threading.Lock()
        self.run_s: dict[str, float] = {}

    @property
    def calls(self) -> int:
        """Jobs run so far."""
        with self._lock:
            return len(self.run_s)

    def run(self, job_id: str, job_input: dict[str, Any]) -> dict[str, Any]:
        """`{"image", "seed", "prompt_id", "width", "height"}`, as the handler answers."""
        with self._lock:
            delay = self.delay_s + self._random.uniform(0, self.jitter_s)
            self.run_s[job_id] = delay
        if delay:
            time.sleep(delay)
        width, height = OUTPUT_SIZE
        return {
            "image": OUTPUT_PNG,
            "seed": int(job_input.get("seed") or 1),
            "prompt_id": f"bench-{job_id}",
            "width": width,
            "height": height,
        }


# ----------------------------------------------------------------------- klein serve, a process


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_env(overrides: dict[str, str]) -> dict[str, str]:
    """This environment without any orchestrator or handler setting (none of the host's own may
    leak in), plus `overrides`."""
    names = {name.upper() for name in (*Settings.model_fields, *HandlerSettings.model_fields)}
    env = {key: value for key, value in os.environ.items() if key.upper() not in names}
    return env | {"PYTHONUNBUFFERED": "1"} | overrides


class Serve:
    """`python -m orchestrator serve` on a free port; its output goes to `log_path`."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int) -> None:
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{port}"
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "serve", "--port", str(port)],
                env=env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self) -> None:
        """GET /readyz until 200, within READY_TIMEOUT_S; BenchError if the process exits."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"klein serve exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise BenchError(f"klein serve was not ready within {READY_TIMEOUT_S:g} s")

    def stop(self) -> None:
        """SIGTERM (it hands in-flight jobs over), then SIGKILL after a bound."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)

    def cpu_s(self) -> float:
        """CPU seconds the process has used so far (user + system; Linux's /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 20) -> str:
        """The end of its output, for a failure's report."""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass(frozen=True)
class Config:
    """One run's shape; None means klein serve's own default."""

    sequential: int
    warmup: int
    batch: int
    runner_s: float
    runner_jitter_s: float
    endpoint_workers: int
    poll_min_interval_s: float | None
    max_in_flight: int | None
    runpod_webhook: bool
    db_poll_s: float
    timeout_s: float

    def env(self) -> dict[str, str]:
        """The settings this run gives klein serve beyond its defaults."""
        env: dict[str, str] = {}
        if self.poll_min_interval_s is not None:
            env["POLL_MIN_INTERVAL_S"] = f"{self.poll_min_interval_s:g}"
        if self.max_in_flight is not None:
            env["MAX_IN_FLIGHT"] = str(self.max_in_flight)
        return env


@dataclass
class Stack:
    """What a run talks to."""

    url: str
    serve: Serve
    runner: InstantRunner
    storage_dir: Path
    http: httpx.Client
    db: psycopg.Connection[Any]


@contextmanager
def stack(config: Config, server: str) -> Iterator[Stack]:
    """Database, endpoint, klein serve, all stopped and removed afterwards, even on error."""
    with ExitStack() as stack_:
        url = stack_.enter_context(scratch_database(server))
        tmp = Path(stack_.enter_context(tempfile.TemporaryDirectory(prefix="klein-bench-")))
        runner = InstantRunner(config.runner_s, config.runner_jitter_s)
        endpoint_config = EndpointConfig(endpoint_id="local", workers=config.endpoint_workers)
        endpoint = stack_.enter_context(EndpointServer(endpoint_config, runner))
        port = free_port()
        env = {
            "DATABASE_URL": url,
            "RUNPOD_API_BASE": endpoint.api_base,
            "RUNPOD_ENDPOINT_ID": "local",
            "LOCAL_STORAGE_DIR": str(tmp / "storage"),
            "WORKER_ID": "bench-serve",
        }
        if config.runpod_webhook:
            env["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"
        serve = Serve(serve_env(env | config.env()), tmp / "klein-serve.log", port)
        stack_.callback(serve.stop)
        try:
            serve.wait_ready()
            http = stack_.enter_context(httpx.Client(timeout=HTTP_TIMEOUT_S))
            db = stack_.enter_context(psycopg.connect(url, autocommit=True))
            yield Stack(url, serve, runner, tmp / "storage", http, db)
        except BaseException:
            print(f"klein serve's log (end):\n{serve.log_tail()}", file=sys.stderr)
            raise


# ----------------------------------------------------------------------------- the web app side


def insert(s: Stack, jobs: list[NewJob]) -> float:
    """Insert the jobs in one transaction; the time of its commit (perf_counter)."""
    with s.db.transaction():
        insert_jobs(s.db, jobs, INPUT_DATA)
    return time.perf_counter()


def post_webhook(http: httpx.Client, base_url: str, job: NewJob) -> bool:
    """The Supabase Database Webhook for the job's INSERT; whether it was accepted."""
    body = {
        "type": "INSERT",
        "table": "generation_jobs",
        "record": {"id": job.job_id},
        "schema": "public",
        "old_record": None,
    }
    answer = http.post(f"{base_url}/webhook/klein_i2i", json=body)
    if answer.status_code != 200:
        raise BenchError(f"webhook answered {answer.status_code}: {answer.text}")
    return bool(answer.json().get("accepted"))


def wait_completed(s: Stack, jobs: list[NewJob], config: Config) -> float:
    """Poll the works every `db_poll_s` until all are finished; the time the last one was seen."""
    work_ids = [job.work_id for job in jobs]
    deadline = time.monotonic() + config.timeout_s
    while True:
        row = s.db.execute(
            "SELECT count(*) FILTER (WHERE status = ANY(%s)) FROM works WHERE id = ANY(%s::uuid[])",
            (list(FINISHED), work_ids),
        ).fetchone()
        if row and row[0] == len(jobs):
            return time.perf_counter()
        if time.monotonic() > deadline:
            done = row[0] if row else 0
            raise BenchError(
                f"{done} of {len(jobs)} job(s) finished within {config.timeout_s:g} s; "
                f"the others: {unfinished(s, jobs)}"
            )
        time.sleep(config.db_poll_s)


def unfinished(s: Stack, jobs: list[NewJob]) -> str:
    """What the rows of unfinished jobs say (a failure's report)."""
    rows = s.db.execute(
        "SELECT w.status, j.status, j.attempts, j.retries, j.locked_by IS NOT NULL,"
        "       j.runpod_job_id IS NOT NULL, j.last_error, count(*)"
        " FROM generation_jobs j JOIN works w ON w.id = j.work_id"
        " WHERE j.id = ANY(%s::uuid[]) AND w.status <> ALL(%s)"
        " GROUP BY 1, 2, 3, 4, 5, 6, 7",
        ([job.job_id for job in jobs], list(FINISHED)),
    ).fetchall()
    return "; ".join(
        f"{n} x work {w}, job {j}, attempts {a}, retries {r}, locked {lk}, runpod id {rp},"
        f" last_error {err!r}"
        for w, j, a, r, lk, rp, err, n in rows
    )


STAGES_SQL = """
SELECT extract(epoch FROM j.taken_at - j.created_at),
       extract(epoch FROM j.submitted_at - j.taken_at),
       extract(epoch FROM w.completed_at - j.submitted_at),
       extract(epoch FROM w.completed_at - j.created_at),
       j.runpod_job_id
FROM generation_jobs j JOIN works w ON w.id = j.work_id
WHERE j.id = ANY(%s::uuid[]) AND w.status = 'completed'
"""


def stages(s: Stack, jobs: list[NewJob]) -> list[list[float]]:
    """Per job from its rows' timestamps: created->taken, taken->submitted, submitted->completed,
    created->completed, and created->completed less the runner's own time (seconds)."""
    rows = s.db.execute(STAGES_SQL, ([job.job_id for job in jobs],)).fetchall()
    return [[*(float(v) for v in row[:4]), float(row[3]) - s.runner.run_s[row[4]]] for row in rows]


def check(s: Stack, jobs: list[NewJob]) -> list[str]:
    """Every job completed once, with its files row (the output's true size) and stored PNG."""
    rows = s.db.execute(
        "SELECT j.status, j.attempts, w.status, f.path, f.width, f.height"
        " FROM generation_jobs j JOIN works w ON w.id = j.work_id"
        " LEFT JOIN files f ON f.id = w.output_file_id WHERE j.id = ANY(%s::uuid[])",
        ([job.job_id for job in jobs],),
    ).fetchall()
    outcomes = Counter(
        "ok"
        if (job_status, attempts, work_status, (width, height))
        == ("completed", 1, "completed", OUTPUT_SIZE)
        and path
        and (s.storage_dir / "works" / path).is_file()
        else f"{work_status}/{job_status}/attempts={attempts}/file={path is not None}"
        for job_status, attempts, work_status, path, width, height in rows
    )
    problems = [f"{n} job(s) {what}" for what, n in outcomes.items() if what != "ok"]
    if outcomes["ok"] != len(jobs):
        problems.append(f"{outcomes['ok']} of {len(jobs)} jobs completed correctly")
    return problems


# ---------------------------------------------------------------------------------- the runs


@dataclass(frozen=True)
class Figures:
    """One run's numbers (seconds, except jobs/s)."""

    latencies: list[float]
    added: list[float]
    stage_medians: list[float]
    batch_jobs_per_s: float | None
    batch_latencies: list[float]
    batch_added: list[float]
    webhooks_accepted: int
    seq_cpu_s_per_job: float
    batch_cpu_s_per_job: float


def sequential(s: Stack, jobs: list[NewJob], config: Config) -> tuple[list[float], int]:
    """One job at a time: insert, webhook, wait; each one's latency, and accepted webhooks."""
    latencies, accepted = [], 0
    for job in jobs:
        committed = insert(s, [job])
        accepted += post_webhook(s.http, s.serve.base_url, job)
        latencies.append(wait_completed(s, [job], config) - committed)
    return latencies, accepted


def batch(s: Stack, jobs: list[NewJob], config: Config) -> float:
    """All jobs in one insert, a webhook each (from a thread); seconds until the last is done."""
    committed = insert(s, jobs)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            with httpx.Client(timeout=HTTP_TIMEOUT_S) as http:
                for job in jobs:
                    post_webhook(http, s.serve.base_url, job)
        except (BenchError, httpx.HTTPError) as exc:
            errors.append(exc)

    sender = threading.Thread(target=send, name="webhooks", daemon=True)
    sender.start()
    done = wait_completed(s, jobs, config)
    sender.join(config.timeout_s)
    if errors:
        raise BenchError(f"webhooks failed: {errors[0]}")
    return done - committed


def run_once(config: Config, server: str) -> Figures:
    """Start everything, run the sequential and batch parts, check, stop everything."""
    with stack(config, server) as s:
        warm = new_jobs(config.warmup)
        sequential(s, warm, config)
        seq_jobs, batch_jobs = new_jobs(config.sequential), new_jobs(config.batch)
        cpu_start = s.serve.cpu_s()
        latencies, accepted = sequential(s, seq_jobs, config)
        cpu_seq = s.serve.cpu_s()
        batch_s = batch(s, batch_jobs, config) if batch_jobs else None
        cpu_batch = s.serve.cpu_s()
        all_jobs = warm + seq_jobs + batch_jobs
        problems = check(s, all_jobs)
        if s.runner.calls != len(all_jobs):
            problems.append(f"the runner ran {s.runner.calls} times for {len(all_jobs)} jobs")
        if problems:
            raise BenchError("correctness check failed:\n  " + "\n  ".join(problems))
        seq_stages, batch_stages = stages(s, seq_jobs), stages(s, batch_jobs)
        return Figures(
            latencies=latencies,
            added=[st[4] for st in seq_stages],
            stage_medians=[_median([st[i] for st in seq_stages]) for i in range(3)],
            batch_jobs_per_s=len(batch_jobs) / batch_s if batch_s else None,
            batch_latencies=[st[3] for st in batch_stages],
            batch_added=[st[4] for st in batch_stages],
            webhooks_accepted=accepted,
            seq_cpu_s_per_job=(cpu_seq - cpu_start) / max(1, len(seq_jobs)),
            batch_cpu_s_per_job=(cpu_batch - cpu_seq) / max(1, len(batch_jobs)),
        )


def _median(values: list[float]) -> float:
    return percentile(values, 0.5) if values else float("nan")


def ms(values: list[float]) -> str:
    """Milliseconds, median (min-max) over runs."""
    return spread([v * 1000 for v in values])


def report(config: Config, runs: list[Figures], version: str) -> None:
    """The results table: each figure as median (min-max) over the runs."""
    poll = config.poll_min_interval_s if config.poll_min_interval_s is not None else 1.0
    title = (
        f"pipeline latency: runner {config.runner_s:g} s (+ up to {config.runner_jitter_s:g} s), "
        f"POLL_MIN_INTERVAL_S={poll:g}, "
        f"MAX_IN_FLIGHT={config.max_in_flight or 16}, RunPod webhook "
        f"{'on' if config.runpod_webhook else 'off'}, {version}, {len(runs)} run(s)"
    )
    rows: list[tuple[str, str]] = []
    timed_runner = bool(config.runner_s or config.runner_jitter_s)
    if config.sequential:
        rows += [
            (f"sequential ({config.sequential} jobs) p50 ms", _pct(runs, 0.5)),
            ("  p95 ms", _pct(runs, 0.95)),
            ("  max ms", ms([max(r.latencies) for r in runs])),
            ("  created -> taken ms (p50)", ms([r.stage_medians[0] for r in runs])),
            ("  taken -> submitted ms (p50)", ms([r.stage_medians[1] for r in runs])),
            ("  submitted -> completed ms (p50)", ms([r.stage_medians[2] for r in runs])),
            *(_added(runs, lambda r: r.added) if timed_runner else []),
            ("  webhooks accepted", spread([float(r.webhooks_accepted) for r in runs])),
            ("  klein serve CPU ms / job", ms([r.seq_cpu_s_per_job for r in runs])),
        ]
    if config.batch:
        rows += [
            (
                f"batch ({config.batch} at once) jobs/s",
                spread([r.batch_jobs_per_s or 0 for r in runs]),
            ),
            ("  per-job p50 ms", ms([percentile(r.batch_latencies, 0.5) for r in runs])),
            ("  per-job max ms", ms([max(r.batch_latencies) for r in runs])),
            *(_added(runs, lambda r: r.batch_added) if timed_runner else []),
            ("  klein serve CPU ms / job", ms([r.batch_cpu_s_per_job for r in runs])),
        ]
    rows.append(("check", "every job completed once, with its files row and PNG: OK"))
    print_table(title, rows)


def _added(runs: list[Figures], values: Callable[[Figures], list[float]]) -> list[tuple[str, str]]:
    """Rows for the latency beyond the runner's own time (created -> completed, less it)."""
    return [
        (f"  added beyond the runner, {name} ms", ms([pick(values(r)) for r in runs]))
        for name, pick in (
            ("p50", lambda v: percentile(v, 0.5)),
            ("p95", lambda v: percentile(v, 0.95)),
            ("max", max),
        )
    ]


def _pct(runs: list[Figures], fraction: float) -> str:
    return ms([percentile(r.latencies, fraction) for r in runs])


def arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline_latency",
        description="The latency klein serve adds to one job, end to end, on one machine.",
    )
    add = parser.add_argument
    add("--sequential", type=int, default=50, help="jobs timed one at a time (50)")
    add("--warmup", type=int, default=2, help="untimed jobs first (2)")
    add("--batch", type=int, default=200, help="jobs inserted at once for throughput (200)")
    add("--runner-s", type=float, default=0.0, help="the runner's time per job, 'GPU' (0)")
    add("--runner-jitter-s", type=float, default=0.0, help="plus uniform [0, this) per job (0)")
    add("--endpoint-workers", type=int, default=8, help="local endpoint workers (8)")
    add("--poll-min-interval-s", type=float, help="POLL_MIN_INTERVAL_S (klein's default: 1)")
    add("--max-in-flight", type=int, help="MAX_IN_FLIGHT (klein's default: 16)")
    add("--runpod-webhook", action="store_true", help="set PUBLIC_BASE_URL: RunPod's webhook")
    add("--db-poll-s", type=float, default=0.005, help="how often the DB is read (0.005)")
    add("--timeout-s", type=float, default=60.0, help="deadline of each wait (60)")
    add("--repeat", type=int, default=1, help="runs, each with a fresh database and serve (1)")
    add("--server", default=DEFAULT_SERVER, help="PostgreSQL server for the scratch database")
    args = parser.parse_args(argv)
    if min(args.sequential, args.batch, args.warmup) < 0 or args.repeat < 1:
        parser.error("counts must not be negative, --repeat at least 1")
    if not args.sequential and not args.batch:
        parser.error("nothing to run: --sequential and --batch are both 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run, report; 1 when a check fails or a wait passes its deadline."""
    args = arguments(argv)
    config = Config(
        sequential=args.sequential,
        warmup=args.warmup,
        batch=args.batch,
        runner_s=args.runner_s,
        runner_jitter_s=args.runner_jitter_s,
        endpoint_workers=args.endpoint_workers,
        poll_min_interval_s=args.poll_min_interval_s,
        max_in_flight=args.max_in_flight,
        runpod_webhook=args.runpod_webhook,
        db_poll_s=args.db_poll_s,
        timeout_s=args.timeout_s,
    )
    try:
        version = server_version(args.server)
        runs = [run_once(config, args.server) for _ in range(args.repeat)]
    except (BenchError, psycopg.Error, httpx.HTTPError, RuntimeError) as exc:
        print(f"pipeline latency: FAILED: {exc}", file=sys.stderr)
        return 1
    report(config, runs, version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
