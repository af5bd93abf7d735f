"""Claim throughput: the orchestrator's database path per job, on real PostgreSQL.

N pending Klein jobs are inserted as the web app inserts them (a `works` row and a
`generation_jobs` row each, through the named queries `insert_work` / `insert_job`). Then one
asyncio process (or `--replicas` processes at once) drives them with up to `--in-flight` jobs each,
the way `orchestrator/service.py` does: a claim loop calling `orchestrator.claim.claim_jobs` for
the free room, and one task per claimed job running the named queries `orchestrator/flow.py`
runs for it, in the same transactions, with no network call in between:

    claim     (service): claim_jobs                                       one statement
    submit    (submit.submit): begin_submission                          one statement, before /run
                               record_submission                          one statement
    timings   (flow, after submit): record_timings                        one statement
    finalize  (finalize.finalize): complete_job                           one statement

The RunPod id is made up, and the await, store and title steps (network only) are skipped. The
heartbeat (one renew_leases per process every 10 s, not per job) is left out too.

Reported: jobs/s from the first claim to the last finish, named statements per job (counted
here, claim_jobs included), round trips per job (one per statement: each runs alone in
autocommit, as orchestrator.db's `one` and `all` do, with no BEGIN or COMMIT, which psycopg would
send as statements of their own), and the transactions the server committed per job
(pg_stat_database, a check on the count). At the end every job must be claimed once, submitted
once (`attempts = 1`), completed once, with one files row; otherwise the exit status is 1.

Run from the repository root (PostgreSQL at 127.0.0.1:5432, trust auth):

    .venv/bin/python -m bench.claim_throughput                  # 2,000 jobs, 200 in flight
    .venv/bin/python -m bench.claim_throughput --replicas 2     # two processes claiming at once
    .venv/bin/python -m bench.claim_throughput --repeat 3       # median and spread of 3 runs

Without `--database-url` each run gets a fresh database that is dropped afterwards. With it, the
database is migrated (idempotent), must hold no pending Klein job (the benchmark would claim it),
and the benchmark's rows are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import secrets
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from bench.benchkit import (
    DEFAULT_SERVER,
    BenchError,
    NewJob,
    insert_jobs,
    migrate,
    new_jobs,
    print_table,
    scratch_database,
    server_version,
    spread,
)
from orchestrator.claim import claim_jobs
from orchestrator.db import Database, fetch_one
from orchestrator.finalize import FILES_NAMESPACE, TAGS
from orchestrator.jobs import ClaimedJob
from orchestrator.settings import KLEIN_TEMPLATE_ID
from orchestrator.storage import output_path

LEASE_S = 30.0  # the service's default LEASE_S
BUCKET = "works"
INPUT_DATA = {
    "prompt": "Change the background to a beach at sunset",
    "image_url": "https://example.com/uploads/reference.png",
    "steps": 4,
    "cfg": 1.0,
    "megapixels": 1.0,
}
OUTPUT_SIZE = (1024, 1024)
STATS_SETTLE_S = 3.0  # how long to wait for the server's statistics to catch up


@dataclass(frozen=True)
class Config:
    """One run's shape."""

    jobs: int
    in_flight: int
    replicas: int
    pool_size: int
    timeout_s: float


@dataclass
class ReplicaResult:
    """What one process did: its claims, its statements, and when it ran (wall clock)."""

    worker_id: str
    claimed: list[str] = field(default_factory=list)
    statements: Counter[str] = field(default_factory=Counter)
    transactions: int = 0  # each statement runs alone, in autocommit
    completed: int = 0
    errors: list[str] = field(default_factory=list)
    started_at: float = 0.0
    ended_at: float = 0.0


# ------------------------------------------------------------------------- one job's statements


async def named(conn: Any, result: ReplicaResult, name: str, **params: Any) -> Any:
    """A named query through orchestrator.db, counted."""
    result.statements[name] += 1
    return await fetch_one(conn, name, **params)


async def fenced(
    conn: Any, result: ReplicaResult, name: str, job: ClaimedJob, **params: Any
) -> Any:
    """A named query fenced on the job's holder (`job_id`, `worker_id`); BenchError when it found
    the job no longer this replica's."""
    row = await named(conn, result, name, job_id=job.id, worker_id=result.worker_id, **params)
    if row is None:
        raise BenchError(f"job {job.id}: {name} fenced out")
    return row


async def submit(db: Database, job: ClaimedJob, result: ReplicaResult) -> None:
    """submit.submit's writes: the token and metadata before /run; then the RunPod id and the
    work to processing, one transaction."""
    runpod_id = f"bench-{uuid.uuid4()}"
    metadata = {
        "prompt": INPUT_DATA["prompt"],
        "original_prompt": INPUT_DATA["prompt"],
        "model": "XiCON_KLEIN_I2I",
        "seed": 1234567,
        "steps": 4,
        "cfg": 1.0,
        "megapixels": 1.0,
        "has_image_input": True,
        "submitted_at": datetime.now(UTC).isoformat(),
        "translation": "skipped",
    }
    result.transactions += 2
    async with db.connection() as conn:
        await fenced(
            conn,
            result,
            "begin_submission",
            job,
            work_id=job.work_id,
            webhook_token=secrets.token_urlsafe(24),
            metadata=metadata,
        )
        recorded = await fenced(
            conn, result, "record_submission", job, work_id=job.work_id, runpod_job_id=runpod_id
        )
    if recorded["submitted_at"] is None:
        raise BenchError(f"job {job.id}: record_submission wrote nothing")
    await record_timings(db, job, result, {"translate": 0, "submit": 40})


async def record_timings(
    db: Database, job: ClaimedJob, result: ReplicaResult, timings: dict[str, int]
) -> None:
    """flow's timings write after the submission (generation_jobs.timings): one statement."""
    result.transactions += 1
    async with db.connection() as conn:
        await fenced(conn, result, "record_timings", job, timings=timings)


async def finalize(db: Database, job: ClaimedJob, result: ReplicaResult) -> None:
    """flow.finalize's write: files row, completed work, completed job and its timings, one
    statement."""
    path = output_path(job.user_id or "", job.work_id)
    file_id = uuid.uuid5(FILES_NAMESPACE, f"{BUCKET}/{path}")
    url = f"https://storage.example/storage/v1/object/public/{BUCKET}/{path}"
    width, height = OUTPUT_SIZE
    output_data = {"image_url": url, "filename": "output.png", "width": width, "height": height}
    result.transactions += 1
    async with db.connection() as conn:
        row = await named(
            conn,
            result,
            "complete_job",
            job_id=job.id,
            worker_id=result.worker_id,
            work_id=job.work_id,
            file_id=file_id,
            user_id=job.user_id,
            bucket_id=BUCKET,
            path=path,
            width=width,
            height=height,
            file_url=url,
            title="I2I 작품",
            output_data=output_data,
            tags=TAGS,
            metadata_patch={"width": width, "height": height},
            timings={"store": 30, "title": 0, "finalize": 0},
        )
    if row is None or not row["completed"]:
        raise BenchError(f"job {job.id}: complete_job wrote nothing")
    result.completed += 1


async def run_one(db: Database, job: ClaimedJob, result: ReplicaResult) -> None:
    """A claimed job, submitted and finalized; a failure is recorded, not raised."""
    try:
        await submit(db, job, result)
        await finalize(db, job, result)
    except (BenchError, psycopg.Error) as exc:
        result.errors.append(str(exc))


# ------------------------------------------------------------------------------ one replica


async def claim(db: Database, result: ReplicaResult, room: int) -> list[ClaimedJob]:
    """orchestrator.claim.claim_jobs for the free room (one statement in its own transaction)."""
    if room <= 0:
        return []
    result.statements["claim_jobs"] += 1
    result.transactions += 1  # one statement in autocommit
    jobs = await claim_jobs(
        db, template_id=KLEIN_TEMPLATE_ID, worker_id=result.worker_id, lease_s=LEASE_S, limit=room
    )
    result.claimed.extend(job.id for job in jobs)
    return jobs


async def drive(db: Database, config: Config, result: ReplicaResult) -> None:
    """service._claim_loop's shape: claim the free room, one task per job, claim again when one
    ends; done when nothing is claimable and nothing is in flight."""
    deadline = time.monotonic() + config.timeout_s
    tasks: set[asyncio.Task[None]] = set()
    room_freed = asyncio.Event()

    def ended(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        room_freed.set()

    try:
        while True:
            room = config.in_flight - len(tasks)
            jobs = await claim(db, result, room)
            for job in jobs:
                task = asyncio.create_task(run_one(db, job, result))
                tasks.add(task)
                task.add_done_callback(ended)
            if not jobs and not tasks:
                return
            if jobs and len(jobs) == room:
                continue
            room_freed.clear()
            await wait_until(room_freed, deadline, result.worker_id, config.timeout_s)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def wait_until(event: asyncio.Event, deadline: float, who: str, timeout_s: float) -> None:
    """Wait for `event`, or raise BenchError once the run's deadline has passed."""
    try:
        await asyncio.wait_for(event.wait(), max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        raise BenchError(f"{who}: not done within {timeout_s:g} s") from None


async def replica(url: str, config: Config, worker_id: str, start: Any = None) -> ReplicaResult:
    """One process's run: open the pool (warmed), wait for the others, drive, close."""
    result = ReplicaResult(worker_id)
    db = Database(url, max_size=config.pool_size)
    await db.open()
    try:
        await warm_pool(db, config.pool_size)
        if start is not None:
            await asyncio.to_thread(start.wait, config.timeout_s)
        result.started_at = time.time()
        await drive(db, config, result)
        result.ended_at = time.time()
    finally:
        await db.close()
    return result


async def warm_pool(db: Database, size: int) -> None:
    """Open every connection before the clock starts, so the run does not time connecting."""
    all_held = asyncio.Barrier(size)

    async def hold() -> None:
        async with db.pool.connection(timeout=10):
            await asyncio.wait_for(all_held.wait(), 10)

    await asyncio.gather(*(hold() for _ in range(size)))


def replica_process(url: str, config: Config, worker_id: str, start: Any, results: Any) -> None:
    """A replica in a process of its own; its result (or its error) goes back on `results`."""
    try:
        results.put(asyncio.run(replica(url, config, worker_id, start)))
    except Exception as exc:  # reported by the parent as this replica's failure
        failed = ReplicaResult(worker_id, errors=[f"{type(exc).__name__}: {exc}"])
        results.put(failed)


def run_replicas(url: str, config: Config) -> list[ReplicaResult]:
    """One replica here, or several processes started together by a barrier."""
    worker_ids = [f"bench-{n}:{uuid.uuid4().hex[:6]}" for n in range(1, config.replicas + 1)]
    if config.replicas == 1:
        return [asyncio.run(replica(url, config, worker_ids[0]))]
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(config.replicas), context.Queue()
    processes = [
        context.Process(target=replica_process, args=(url, config, worker_id, start, results))
        for worker_id in worker_ids
    ]
    for process in processes:
        process.start()
    try:
        return collect(results, config, len(processes))
    finally:
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)


def collect(results: Any, config: Config, count: int) -> list[ReplicaResult]:
    """Every replica's result, within the run's deadline (plus time to start the processes)."""
    deadline = time.monotonic() + config.timeout_s + 30
    collected: list[ReplicaResult] = []
    while len(collected) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"{count - len(collected)} replica(s) never reported")
        try:
            collected.append(results.get(timeout=remaining))
        except Exception as exc:  # queue.Empty: the deadline passed
            raise BenchError(f"{count - len(collected)} replica(s) never reported") from exc
    return collected


# ------------------------------------------------------------------------------ setup, checks


@contextmanager
def bench_database(database_url: str | None) -> Iterator[str]:
    """A fresh database (dropped afterwards), or the given one, migrated and checked."""
    if database_url is None:
        with scratch_database(DEFAULT_SERVER) as url:
            yield url
        return
    migrate(database_url)
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM generation_jobs j JOIN works w ON w.id = j.work_id"
            " WHERE w.template_id = %s AND j.status IN ('pending', 'taken')",
            (KLEIN_TEMPLATE_ID,),
        ).fetchone()
    if row and row[0]:
        raise BenchError(f"{row[0]} Klein job(s) already pending or taken there; refusing")
    yield database_url


def prepare(url: str, jobs: list[NewJob]) -> None:
    """Insert the jobs in one transaction and ANALYZE, as autovacuum would have by now."""
    with psycopg.connect(url) as conn:
        insert_jobs(conn, jobs, INPUT_DATA)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE works, generation_jobs, templates, files")


def remove(url: str, jobs: list[NewJob]) -> None:
    """Delete the benchmark's rows from a database that was not its own."""
    job_ids = [job.job_id for job in jobs]
    work_ids = [job.work_id for job in jobs]
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM generation_jobs WHERE id = ANY(%s::uuid[])", (job_ids,))
        files = conn.execute(
            "DELETE FROM works WHERE id = ANY(%s::uuid[]) RETURNING output_file_id", (work_ids,)
        ).fetchall()
        conn.execute("DELETE FROM files WHERE id = ANY(%s::uuid[])", ([f[0] for f in files],))


def committed_transactions(url: str) -> int:
    """The server's count of committed transactions in this database, once it stops moving."""
    deadline = time.monotonic() + STATS_SETTLE_S
    last = -1
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
            value = int(row[0]) if row else 0
            if value == last or time.monotonic() > deadline:
                return value
            last = value
            time.sleep(0.2)


def check(url: str, jobs: list[NewJob], results: list[ReplicaResult]) -> list[str]:
    """Every job claimed once, submitted once, completed once, with its files row."""
    problems = [f"{r.worker_id}: {e}" for r in results for e in r.errors[:5]]
    claims = Counter(job_id for r in results for job_id in r.claimed)
    expected = {job.job_id for job in jobs}
    twice = [job_id for job_id, n in claims.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} job(s) claimed more than once, e.g. {twice[0]}")
    if set(claims) != expected:
        problems.append(f"claimed {len(set(claims))} distinct jobs of {len(expected)}")
    if sum(r.completed for r in results) != len(jobs):
        problems.append(f"completed {sum(r.completed for r in results)} of {len(jobs)}")
    problems.extend(check_rows(url, jobs, {r.worker_id for r in results}))
    return problems


def check_rows(url: str, jobs: list[NewJob], worker_ids: set[str]) -> list[str]:
    """What the database says about the jobs."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE j.status = 'completed' AND j.attempts = 1"
            "                          AND j.finished_at IS NOT NULL AND j.locked_by = ANY(%s)),"
            "       count(*) FILTER (WHERE w.status = 'completed' AND f.id IS NOT NULL),"
            "       count(DISTINCT f.id)"
            " FROM generation_jobs j JOIN works w ON w.id = j.work_id"
            " LEFT JOIN files f ON f.id = w.output_file_id"
            " WHERE j.id = ANY(%s::uuid[])",
            (list(worker_ids), [job.job_id for job in jobs]),
        ).fetchone()
    jobs_done, works_done, files = row or (0, 0, 0)
    n = len(jobs)
    return [
        f"{what}: {got} of {n}"
        for what, got in (
            ("jobs completed once by a replica, attempts = 1", jobs_done),
            ("works completed with their files row", works_done),
            ("distinct files rows", files),
        )
        if got != n
    ]


# ------------------------------------------------------------------------------ one run, report


@dataclass(frozen=True)
class RunFigures:
    """One run's numbers."""

    elapsed_s: float
    jobs_per_s: float
    statements_per_job: float
    round_trips_per_job: float
    transactions_per_job: float
    server_transactions_per_job: float
    mean_claim_batch: float
    statements: Counter[str]


def run_once(config: Config, database_url: str | None) -> RunFigures:
    """Set up, drive, check, clean up; raises BenchError when the check fails."""
    jobs = new_jobs(config.jobs)
    with bench_database(database_url) as url:
        try:
            prepare(url, jobs)
            before = committed_transactions(url)
            results = run_replicas(url, config)
            after = committed_transactions(url)
            problems = check(url, jobs, results)
        finally:
            if database_url is not None:
                remove(url, jobs)
    if problems:
        raise BenchError("correctness check failed:\n  " + "\n  ".join(problems))
    return figures(config, results, after - before)


def figures(config: Config, results: list[ReplicaResult], server_commits: int) -> RunFigures:
    """Throughput and statements per job from the replicas' own counts."""
    elapsed = max(r.ended_at for r in results) - min(r.started_at for r in results)
    statements: Counter[str] = Counter()
    for r in results:
        statements.update(r.statements)
    transactions = sum(r.transactions for r in results)
    n = config.jobs
    return RunFigures(
        elapsed_s=elapsed,
        jobs_per_s=n / elapsed,
        statements_per_job=statements.total() / n,
        round_trips_per_job=statements.total() / n,  # no BEGIN or COMMIT: all autocommit
        transactions_per_job=transactions / n,
        server_transactions_per_job=server_commits / n,
        mean_claim_batch=n / max(1, statements["claim_jobs"]),
        statements=statements,
    )


def report(config: Config, runs: list[RunFigures], version: str) -> None:
    """The results table: median (min-max) over the runs."""
    title = (
        f"claim throughput: {config.jobs} jobs, {config.in_flight} in flight per replica, "
        f"{config.replicas} replica(s), pool {config.pool_size}, {version}, {len(runs)} run(s)"
    )
    rows = [
        ("jobs/s", spread([r.jobs_per_s for r in runs])),
        ("elapsed s", spread([r.elapsed_s for r in runs])),
        ("named statements / job", spread([r.statements_per_job for r in runs])),
        ("round trips / job", spread([r.round_trips_per_job for r in runs])),
        ("transactions / job", spread([r.transactions_per_job for r in runs])),
        ("  the server's count", spread([r.server_transactions_per_job for r in runs])),
        ("jobs per claim_jobs", spread([r.mean_claim_batch for r in runs])),
    ]
    rows += [
        (f"  {name} / job", f"{count / config.jobs:.3g}")
        for name, count in sorted(runs[-1].statements.items())
    ]
    rows.append(("check", "every job claimed, submitted and completed exactly once: OK"))
    print_table(title, rows)


def arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.claim_throughput",
        description="The orchestrator's database path per job, on real PostgreSQL.",
    )
    parser.add_argument("--jobs", type=int, default=2000, help="pending jobs (default 2000)")
    parser.add_argument(
        "--in-flight", type=int, default=200, help="jobs each replica drives at once (200)"
    )
    parser.add_argument("--replicas", type=int, default=1, help="processes claiming at once (1)")
    parser.add_argument(
        "--pool-size",
        type=int,
        help="connections per replica (default: klein serve's rule, max(4, min(20, K/4 + 4)))",
    )
    parser.add_argument(
        "--database-url", help="use this database instead of a fresh one on 127.0.0.1:5432"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs, each on fresh rows (1)")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="deadline of each run")
    args = parser.parse_args(argv)
    if min(args.jobs, args.in_flight, args.replicas, args.repeat) < 1:
        parser.error("--jobs, --in-flight, --replicas and --repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run, report; 1 when a check fails or the run cannot finish."""
    args = arguments(argv)
    # The same pool size `klein serve` gives itself for MAX_IN_FLIGHT (orchestrator/serve.py).
    pool_size = args.pool_size or max(4, min(20, args.in_flight // 4 + 4))
    config = Config(args.jobs, args.in_flight, args.replicas, pool_size, args.timeout_s)
    try:
        version = server_version(args.database_url or DEFAULT_SERVER)
        runs = [run_once(config, args.database_url) for _ in range(args.repeat)]
    except (BenchError, psycopg.Error) as exc:
        print(f"claim throughput: FAILED: {exc}", file=sys.stderr)
        return 1
    report(config, runs, version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
