"""The full path at production load: N jobs inserted at once, each translated, submitted,
awaited, stored, titled and finalized by a real `klein serve` (a subprocess, whose memory is
measured), against protocol-level fakes with realistic latencies.

The fakes (bench/fakes.py, threads of this process): OpenRouter answering a translation in
0.2 s and a vision title in 0.3 s; Supabase Storage answering an upload in 0.05 s; RunPod's
client API, whose jobs run 1.5-2.5 s of "GPU" (2 s on average, spread evenly, so that polls on a
fixed grid do not fall on every job's end) from their `/run` (unlimited workers, no queue) and
complete with a 1168x880 photo-like PNG (base64 in `output.image`, the handler's output contract),
sent again to the job's completion webhook when the orchestrator asked for one (`--mode webhook`:
PUBLIC_BASE_URL set) or only polled for (`--mode polling`). Prompts are Korean, so every job is
translated and titled. PostgreSQL is real (a fresh database). MAX_IN_FLIGHT is the job count
(divided between `--replicas N` processes, each with REPLICAS=N) unless `--max-in-flight` says
otherwise. With `--rate R` the jobs are inserted one by one, R per second, instead of at once:
the overhead a steady load below capacity sees, not a burst's queue.

Reported: completed count; jobs/s from the insert's commit to the last completion; orchestrator
overhead p50/p95/p99 (the insert's commit -> the finalize's start, `completed_at`, less the
fakes' own time: 0.55 s, or 0.5 s with `--set TITLE_IMAGE=thumbnail`, where the title overlaps
the upload, and the job's GPU run); the jobs' own time p50/p95/p99 (the same span, less every
stretch the fakes themselves saw: each request from its arrival to its answer, the GPU run, and
the RunPod fake's delay before sending the webhook; the fakes' CPU work is theirs here; a
thumbnail's title request names no job, so with TITLE_IMAGE=thumbnail the title counts as own
time) and where it went
(the uncovered time before each step: the translation, `/run`, the upload, the title, the end);
completion detection delay p50/p95 (a RunPod job finished -> the first `/status` answer
that says so, or the webhook's answer, both on the fake's clock); peak RSS (the kernel's VmHWM
of klein serve) and its RSS once ready; the most RunPod `/status` calls in any 10 s; klein
serve's CPU seconds. Correctness: every job completed once, titled by the model, with its files
row and stored PNG of the output's size; otherwise the exit status is 1.

Left out: RunPod's queue, cold starts and worker limits; the network (everything is on
127.0.0.1, so no TLS and no bandwidth limits); the web app reading results; the fakes share this
process and the machine's cores with klein serve.

    .venv/bin/python -m bench.full_path --jobs 200 [--mode polling|webhook] [--repeat 3]
    .venv/bin/python -m bench.full_path --jobs 1000 --mode polling --py-spy /tmp/profile.svg
    .venv/bin/python -m bench.full_path --jobs 600 --rate 10   # a steady load, not a burst
"""

from __future__ import annotations

import argparse
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from bench.benchkit import (
    DEFAULT_SERVER,
    BenchError,
    NewJob,
    insert_jobs,
    new_jobs,
    percentile,
    print_table,
    scratch_database,
    spread,
)
from bench.fakes import RunPodServer, SlowOpenRouter, SlowStorage, photo_png
from bench.figures import (
    JobRow,
    Latencies,
    Span,
    covered_s,
    detection_delays,
    first_seen,
    gaps,
    job_problem,
    max_in_window,
    overheads,
)
from bench.pipeline_latency import Serve, free_port, serve_env
from tests.fakes.openrouter import DEFAULT_API_KEY, IMAGE_TITLE
from tests.fakes.storage import DEFAULT_SERVICE_KEY

OUTPUT_SIZE = (1168, 880)
ENDPOINT_ID = "bench"
BUCKET = "works"
PROMPT = {"prompt": "배경을 해변으로 바꿔줘", "image_url": "https://example.com/photo.png"}
DB_POLL_S = 0.2
STATUS_WINDOW_S = 10.0
GAPS = ("before translate", "before run", "before upload", "before title", "before end")


@dataclass(frozen=True)
class Config:
    """One run's shape."""

    jobs: int
    mode: str
    latencies: Latencies
    gpu_jitter_s: float
    max_in_flight: int
    poll_min_interval_s: float | None
    timeout_s: float
    py_spy: Path | None
    extra_env: tuple[tuple[str, str], ...] = ()
    rate: float | None = None  # jobs inserted per second; None: all at once
    replicas: int = 1  # klein serve processes sharing the database (MAX_IN_FLIGHT each)

    @property
    def arrivals(self) -> str:
        """How the jobs arrive, for the report's title."""
        return "at once" if self.rate is None else f"arriving at {self.rate:g}/s"


@dataclass(frozen=True)
class Figures:
    """One run's numbers (seconds unless named otherwise)."""

    completed: int
    jobs_per_s: float
    overhead: list[float]
    own: list[float]  # each job's time no fake's answer or GPU run covered
    gaps: list[dict[str, float]]  # that time, step by step (figures.gaps)
    detection: list[float]
    status_seen: list[float]
    peak_rss_mb: float
    ready_rss_mb: float
    status_per_10s: int
    cpu_s: float
    cpu_wait_s: float
    fakes_cpu_s: float
    machine_busy: float  # of all cores, 0..1
    output_reads: int
    via_webhook: float  # results klein took from the webhook's body, not from /status
    stages: dict[str, float]
    problems: list[str]


@dataclass
class Stack:
    """What one run drives."""

    url: str
    serves: list[Serve]
    runpod: RunPodServer
    openrouter: SlowOpenRouter
    storage: SlowStorage
    db: psycopg.Connection[tuple[object, ...]]


def serve_settings(config: Config, s_runpod: str, s_llm: str, s_storage: str) -> dict[str, str]:
    """klein serve's environment for the fakes (the database and port are added later)."""
    env = {
        "RUNPOD_API_BASE": s_runpod,
        "RUNPOD_ENDPOINT_ID": ENDPOINT_ID,
        "RUNPOD_API_KEY": "bench-runpod-key",
        "OPENROUTER_API_KEY": DEFAULT_API_KEY,
        "OPENROUTER_BASE_URL": s_llm,
        "STORAGE_BACKEND": "supabase",
        "SUPABASE_URL": s_storage,
        "SUPABASE_SERVICE_ROLE_KEY": DEFAULT_SERVICE_KEY,
        "MAX_IN_FLIGHT": str(config.max_in_flight),
    }
    if config.poll_min_interval_s is not None:
        env["POLL_MIN_INTERVAL_S"] = str(config.poll_min_interval_s)
    return env | dict(config.extra_env)


@contextmanager
def stack(config: Config, server: str, png: bytes) -> Iterator[Stack]:
    """Database, fakes and klein serve, all stopped and removed afterwards, even on error."""
    lat = config.latencies
    with ExitStack() as stack_:
        url = stack_.enter_context(scratch_database(server))
        tmp = Path(stack_.enter_context(tempfile.TemporaryDirectory(prefix="klein-full-")))
        runpod = stack_.enter_context(
            RunPodServer(ENDPOINT_ID, lat.gpu_s, png, OUTPUT_SIZE, config.gpu_jitter_s)
        )
        llm = stack_.enter_context(SlowOpenRouter(lat.translate_s, lat.title_s))
        storage = stack_.enter_context(SlowStorage(lat.storage_s))
        serves = []
        for replica in range(config.replicas):
            port = free_port()
            env = serve_settings(config, runpod.api_base, llm.base_url, storage.url)
            env |= {
                "DATABASE_URL": url,
                "WORKER_ID": f"bench-full-path-{replica}",
                "REPLICAS": str(config.replicas),
            }
            if config.mode == "webhook":
                env["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"
            serves.append(Serve(serve_env(env), tmp / f"klein-serve-{replica}.log", port))
            stack_.callback(serves[-1].stop)
        try:
            for serve in serves:
                serve.wait_ready()
            db = stack_.enter_context(psycopg.connect(url, autocommit=True))
            yield Stack(url, serves, runpod, llm, storage, db)
        except BaseException:
            for serve in serves:
                print(f"klein serve's log (end):\n{serve.log_tail()}", file=sys.stderr)
            raise


def rss_mb(pid: int, field: str) -> float:
    """A memory figure of /proc/<pid>/status (VmRSS: now; VmHWM: the peak so far), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"/proc/{pid}/status has no {field}")


def machine_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of every core so far (/proc/stat): iowait counts as idle."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def runqueue_wait_s(pid: int) -> float:
    """Seconds klein serve's threads were ready to run but waited for a core (Linux schedstat):
    the machine's contention, not the orchestrator's work."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


@contextmanager
def py_spy(target: Path | None, pid: int) -> Iterator[None]:
    """`py-spy record` on klein serve for the block, when asked for (`--py-spy FILE`)."""
    if target is None:
        yield
        return
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [exe, "record", "--pid", str(pid), "--rate", "100", "--gil", "-o", str(target)]
    if target.suffix == ".txt":
        command += ["--format", "raw"]
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        try:
            recorder.wait(60)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait(10)


def wait_finished(s: Stack, count: int, timeout_s: float) -> None:
    """Until `count` works are finished (completed or failed), within the deadline."""
    deadline = time.monotonic() + timeout_s
    done = 0
    while time.monotonic() < deadline:
        row = s.db.execute(
            "SELECT count(*) FROM works WHERE status IN ('completed', 'failed', 'cancelled')"
        ).fetchone()
        done = int(row[0]) if row else 0
        if done >= count:
            return
        for serve in s.serves:
            if serve.process.poll() is not None:
                raise BenchError(f"klein serve exited with {serve.process.returncode}")
        time.sleep(DB_POLL_S)
    print(f"full path: {done} of {count} jobs finished within {timeout_s:g} s", file=sys.stderr)


ROWS_SQL = """
SELECT w.status, j.status, j.attempts, w.title, f.width, f.height, f.path,
       extract(epoch FROM w.completed_at), extract(epoch FROM w.created_at), j.runpod_job_id,
       w.id
FROM generation_jobs j JOIN works w ON w.id = j.work_id
LEFT JOIN files f ON f.id = w.output_file_id
"""


@dataclass
class Collected:
    """Each job's rows and, for the completed ones, their times."""

    rows: list[JobRow]
    end_to_end: list[float]  # the insert's commit -> completed
    gpu: list[float]  # the RunPod fake's run time
    own: list[float]  # the same, less every stretch inside a fake
    gaps: list[dict[str, float]]  # that own time, step by step
    last: float | None  # the last completion


def collect(s: Stack, committed: dict[str, float]) -> Collected:
    """Each job's rows; the completed ones' committed -> completed, their GPU run times (the
    RunPod fake's) and their own time outside the fakes; the last completion."""
    inside = time_inside_fakes(s)
    got = Collected([], [], [], [], [], None)
    for (
        w_status,
        j_status,
        attempts,
        title,
        width,
        height,
        path,
        done,
        created,
        runpod_id,
        work_id,
    ) in s.db.execute(ROWS_SQL):
        size = (int(width), int(height)) if width is not None else None
        stored = s.storage.stored_size(BUCKET, str(path)) if path else None
        got.rows.append(JobRow(str(w_status), str(j_status), int(attempts), title, size, stored))
        run = s.runpod.log.runs.get(str(runpod_id))
        if done is not None and run is not None:
            start, end = committed.get(str(work_id), float(created)), float(done)
            spans = inside.get(str(work_id), [])
            got.end_to_end.append(end - start)
            got.gpu.append(run.finish_at - run.submitted_at)
            got.own.append(end - start - covered_s(spans, start, end))
            got.gaps.append(gaps(spans, start, end))
            got.last = max(got.last or 0.0, end)
    return got


def time_inside_fakes(s: Stack) -> dict[str, list[Span]]:
    """Every stretch a job spent inside a fake, by the UUIDs its requests named (its work's id
    among them): OpenRouter's and Storage's answers, RunPod's `/run` answer and GPU run, and
    the moments the RunPod fake took to begin sending the webhook after the run ended."""
    inside: dict[str, list[Span]] = {}
    for visit in s.openrouter.visits.all() + s.storage.visits.all():
        for key in visit.ids:
            inside.setdefault(key, []).append(Span(visit.kind, visit.start, visit.end))
    for run in list(s.runpod.log.runs.values()):
        spans = [
            Span("run", run.submitted_at, run.answered_at or run.submitted_at),
            Span("gpu", run.submitted_at, run.finish_at),
        ]
        if run.webhook_posting_at is not None:
            spans.append(Span("webhook", run.finish_at, run.webhook_posting_at))
        for key in run.ids:
            inside.setdefault(key, []).extend(spans)
    return inside


def run_once(config: Config, server: str, png: bytes) -> Figures:
    """Start everything, insert the jobs at once, wait, measure, check, stop everything."""
    with stack(config, server, png) as s:
        pids = [serve.process.pid for serve in s.serves]
        ready_rss = max(rss_mb(pid, "VmRSS") for pid in pids)
        cpu_start, wait_start = serves_cpu_s(s), sum(map(runqueue_wait_s, pids))
        fakes_start, machine_start = time.process_time(), machine_ticks()
        with py_spy(config.py_spy, pids[0]):
            committed = insert(s.db, config)
            wait_finished(s, config.jobs, config.timeout_s)
        cpu_s = serves_cpu_s(s) - cpu_start
        cpu_wait_s = sum(map(runqueue_wait_s, pids)) - wait_start
        fakes_cpu_s = time.process_time() - fakes_start
        busy, total = (
            end - start for end, start in zip(machine_ticks(), machine_start, strict=True)
        )
        metrics = "\n".join(
            httpx.get(f"{serve.base_url}/metrics", timeout=5).text for serve in s.serves
        )
        stages, via = stage_means(metrics), results_via(metrics)
        peak_rss = max(rss_mb(pid, "VmHWM") for pid in pids)
        got = collect(s, committed)
        log = s.runpod.log
        problems = [p for row in got.rows if (p := job_problem(row, OUTPUT_SIZE, IMAGE_TITLE))]
        problems += other_problems(len(got.rows), config.jobs, s)
        if problems:
            for serve in s.serves:
                print(f"klein serve's log (end):\n{serve.log_tail(5)}", file=sys.stderr)
        runs = list(log.runs.values())
        return Figures(
            completed=len(got.end_to_end),
            jobs_per_s=len(got.end_to_end) / (got.last - min(committed.values()))
            if got.last
            else 0.0,
            overhead=overheads(got.end_to_end, config.latencies, got.gpu),
            own=got.own,
            gaps=got.gaps,
            detection=detection_delays(
                [(r.finish_at, first_seen(r.seen_finished_at, r.webhook_sent_at)) for r in runs]
            ),
            status_seen=detection_delays([(r.finish_at, r.seen_finished_at) for r in runs]),
            peak_rss_mb=peak_rss,
            ready_rss_mb=ready_rss,
            status_per_10s=max_in_window(log.status_times, STATUS_WINDOW_S),
            cpu_s=cpu_s,
            cpu_wait_s=cpu_wait_s,
            fakes_cpu_s=fakes_cpu_s,
            machine_busy=busy / total if total else math.nan,
            output_reads=log.output_reads,
            via_webhook=via.get("webhook", 0.0),
            stages=stages,
            problems=problems,
        )


def serves_cpu_s(s: Stack) -> float:
    """The CPU seconds of every klein serve so far."""
    return sum(serve.cpu_s() for serve in s.serves)


def insert(db: psycopg.Connection[tuple[object, ...]], config: Config) -> dict[str, float]:
    """The web app's inserts: all jobs in one transaction, or one by one at `config.rate` per
    second (a steady load rather than a burst). Returns when each work was committed: no
    orchestrator sees a job before that, so its time starts there (the rows' `created_at` is
    the insert transaction's start)."""
    jobs = new_jobs(config.jobs)
    if config.rate is None:
        with db.transaction():
            insert_jobs(db, jobs, job_input)
        committed = time.time()
        return {job.work_id: committed for job in jobs}
    start = time.monotonic()
    commits = {}
    for index, job in enumerate(jobs):
        time.sleep(max(0.0, start + index / config.rate - time.monotonic()))
        with db.transaction():
            insert_jobs(db, [job], job_input)
        commits[job.work_id] = time.time()
    return commits


def job_input(job: NewJob) -> dict[str, str]:
    """The Korean prompt, naming the work: its translation, and so its `/run`, carry the id,
    which tells each request in the fakes to its job."""
    return PROMPT | {"prompt": f"{PROMPT['prompt']} ({job.work_id})"}


def other_problems(rows: int, jobs: int, s: Stack) -> list[str]:
    """What is wrong beyond single jobs: missing rows, prompts sent untranslated."""
    problems = [f"{rows} job rows for {jobs} jobs inserted"] if rows != jobs else []
    translations, _ = s.openrouter.counts()
    if translations < jobs:
        problems.append(f"{translations} translation request(s) for {jobs} Korean prompts")
    return problems


def results_via(metrics_text: str) -> dict[str, float]:
    """klein serve's finished RunPod results by how they came (klein_runpod_results_total; of
    every replica whose text is joined)."""
    prefix = 'klein_runpod_results_total{via="'
    totals: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith(prefix):
            name, _, value = line[len(prefix) :].partition('"} ')
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def stage_means(metrics_text: str) -> dict[str, float]:
    """Mean seconds per stage from klein serve's /metrics (klein_stage_seconds; several
    replicas' texts may be joined)."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        for suffix, into in (("_sum", sums), ("_count", counts)):
            prefix = f'klein_stage_seconds{suffix}{{stage="'
            if line.startswith(prefix):
                name, _, value = line[len(prefix) :].partition('"} ')
                into[name] = into.get(name, 0.0) + float(value)
    return {name: sums[name] / counts[name] for name in sums if counts.get(name)}


def ms(values: list[float]) -> str:
    """Milliseconds, median (min-max) over runs."""
    return spread([v * 1000 for v in values])


def report(config: Config, runs: list[Figures]) -> None:
    """The results table: each figure as median (min-max) over the runs."""
    pct = lambda pick, f: ms([percentile(pick(r), f) for r in runs])  # noqa: E731
    print_table(
        f"full path: {config.jobs} jobs {config.arrivals}, {config.mode}, "
        f"{config.replicas} klein serve, MAX_IN_FLIGHT={config.max_in_flight}, "
        f"fakes {config.latencies.total_s:g} s/job (GPU {config.latencies.gpu_s:g}"
        f"±{config.gpu_jitter_s / 2:g} s), "
        f"{OUTPUT_SIZE[0]}x{OUTPUT_SIZE[1]} PNG outputs, {len(runs)} run(s)",
        [
            ("completed", spread([float(r.completed) for r in runs])),
            ("jobs/s", spread([r.jobs_per_s for r in runs])),
            ("overhead p50 ms", pct(lambda r: r.overhead, 0.5)),
            ("overhead p95 ms", pct(lambda r: r.overhead, 0.95)),
            ("overhead p99 ms", pct(lambda r: r.overhead, 0.99)),
            ("own time p50 ms (outside every fake)", pct(lambda r: r.own, 0.5)),
            ("own time p95 ms", pct(lambda r: r.own, 0.95)),
            ("own time p99 ms", pct(lambda r: r.own, 0.99)),
            *(
                (f"  {name} p50 ms", pct(lambda r, n=name: [g.get(n, 0.0) for g in r.gaps], 0.5))
                for name in GAPS
            ),
            ("detection p50 ms", pct(lambda r: r.detection, 0.5)),
            ("detection p95 ms", pct(lambda r: r.detection, 0.95)),
            ("first COMPLETED /status p50 ms", pct(lambda r: r.status_seen, 0.5)),
            ("first COMPLETED /status p95 ms", pct(lambda r: r.status_seen, 0.95)),
            ("peak RSS MB (the largest klein serve)", spread([r.peak_rss_mb for r in runs])),
            ("RSS once ready MB", spread([r.ready_rss_mb for r in runs])),
            ("max /status per 10 s", spread([float(r.status_per_10s) for r in runs])),
            ("klein serve CPU ms / job (all)", ms([r.cpu_s / config.jobs for r in runs])),
            ("  ready to run, no free core, s", spread([r.cpu_wait_s for r in runs])),
            (
                "fakes' CPU ms / job",
                ms([r.fakes_cpu_s / config.jobs for r in runs]),
            ),
            ("machine CPU busy, % of all cores", spread([100 * r.machine_busy for r in runs])),
            ("/status answers carrying an output", spread([float(r.output_reads) for r in runs])),
            ("results taken from the webhook", spread([r.via_webhook for r in runs])),
            *(
                (f"  stage {name} mean ms", ms([r.stages.get(name, float("nan")) for r in runs]))
                for name in runs[0].stages
            ),
            ("check", check_line(runs)),
        ],
    )
    for problem in sorted({p for r in runs for p in r.problems})[:10]:
        print(f"  problem: {problem}")
    print(
        "left out: RunPod's queue and cold starts, the network (all on 127.0.0.1), "
        "the web app's reads; the fakes share this machine's cores"
    )


def check_line(runs: list[Figures]) -> str:
    """Whether every job of every run completed as it should."""
    failed = sum(len(r.problems) for r in runs)
    if not failed:
        return "every job completed once, titled, files row and stored PNG: OK"
    return f"FAILED: {failed} problem(s) (below); the figures above include the failed jobs' runs"


def arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.full_path", description=__doc__.split("\n")[0]
    )
    add = parser.add_argument
    add("--jobs", type=int, default=200, help="jobs inserted at once (200)")
    add("--rate", type=float, help="insert the jobs one by one, this many per second")
    add("--mode", choices=("polling", "webhook"), default="webhook", help="RunPod detection")
    add("--gpu-s", type=float, default=2.0, help="each RunPod job's mean run time (2)")
    add(
        "--gpu-jitter-s",
        type=float,
        default=1.0,
        help="run times spread evenly over this width around --gpu-s (1: 1.5-2.5 s), so that "
        "polls cannot fall on every job's end",
    )
    add("--translate-s", type=float, default=0.2, help="OpenRouter translation latency (0.2)")
    add("--title-s", type=float, default=0.3, help="OpenRouter vision title latency (0.3)")
    add("--storage-s", type=float, default=0.05, help="Storage upload latency (0.05)")
    add("--replicas", type=int, default=1, help="klein serve processes (1)")
    add("--max-in-flight", type=int, help="MAX_IN_FLIGHT of each (default: jobs / replicas)")
    add("--poll-min-interval-s", type=float, help="POLL_MIN_INTERVAL_S (klein's default)")
    add("--timeout-s", type=float, default=300.0, help="deadline for all jobs to finish (300)")
    add("--repeat", type=int, default=1, help="runs, each with a fresh database and serve (1)")
    add("--set", action="append", default=[], metavar="NAME=VALUE", help="another setting")
    add("--py-spy", type=Path, help="record a py-spy profile of klein serve to this file")
    add("--server", default=DEFAULT_SERVER, help="PostgreSQL server for the scratch database")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.repeat < 1 or args.replicas < 1:
        parser.error("--jobs, --repeat and --replicas must be at least 1")
    if args.gpu_jitter_s < 0:
        parser.error("--gpu-jitter-s must be 0 or more")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be above 0")
    if any("=" not in item for item in args.set):
        parser.error("--set wants NAME=VALUE")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run, report; 1 when a check fails or a wait passes its deadline."""
    args = arguments(argv)
    config = Config(
        jobs=args.jobs,
        mode=args.mode,
        latencies=Latencies(
            args.translate_s,
            args.gpu_s,
            args.storage_s,
            args.title_s,
            title_overlaps_upload=("TITLE_IMAGE=thumbnail" in args.set),
        ),
        gpu_jitter_s=args.gpu_jitter_s,
        max_in_flight=args.max_in_flight or math.ceil(args.jobs / args.replicas),
        poll_min_interval_s=args.poll_min_interval_s,
        timeout_s=args.timeout_s,
        py_spy=args.py_spy,
        extra_env=tuple(tuple(item.split("=", 1)) for item in args.set),  # type: ignore[misc]
        rate=args.rate,
        replicas=args.replicas,
    )
    png = photo_png(*OUTPUT_SIZE)
    print(f"output PNG: {OUTPUT_SIZE[0]}x{OUTPUT_SIZE[1]}, {len(png) // 1000} KB")
    try:
        runs = [run_once(config, args.server, png) for _ in range(args.repeat)]
    except (BenchError, psycopg.Error, httpx.HTTPError, RuntimeError, OSError) as exc:
        print(f"full path: FAILED: {exc}", file=sys.stderr)
        return 1
    report(config, runs)
    return 1 if any(r.problems for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
