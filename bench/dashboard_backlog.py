"""What one dashboard read costs under a backlog: `--pending` jobs waiting to be claimed (asked
for over the last two hours, 1% of them waiting out a retry delay), a few in flight, and an
hour's history, in a fresh database.

It times `--runs` whole snapshot reads (what one refresh of `/dashboard.json` costs the database
when the shared snapshot is stale), then each dashboard query alone; `--plans` prints their
plans (EXPLAIN ANALYZE), so a scan over the backlog shows.

    .venv/bin/python -m bench.dashboard_backlog [--pending 400000] [--runs 5] [--plans]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import psycopg

from bench.benchkit import DEFAULT_SERVER, scratch_database, server_version
from orchestrator.dashboard import snapshot
from orchestrator.dashboard.snapshot import QUEUE_STAGES
from orchestrator.db import queries
from orchestrator.settings import KLEIN_TEMPLATE_ID

# Works and their jobs, `n` of them in one statement, each asked for at a random time within
# `age`; the work's status is given beside its job's, as the flow writes them.
FILL = """
WITH w AS (
    INSERT INTO works (user_id, template_id, input_data, status, created_at)
    SELECT gen_random_uuid(), %(template)s, '{"prompt": "make it snow"}', %(work_status)s,
           now() - %(age)s::interval * random()
    FROM generate_series(1, %(n)s)
    RETURNING id, created_at
)
INSERT INTO generation_jobs (work_id, status, created_at, finished_at, not_before, retries)
SELECT id, %(job_status)s, created_at,
       CASE WHEN %(job_status)s IN ('completed', 'failed') THEN now() - interval '1 minute'
                                                              * random() * 50 END,
       CASE WHEN random() < %(delayed)s THEN now() + interval '10 minutes' END,
       0
FROM w
"""
HISTORY_SHARE_FAILED = 0.05
QUERIES = ("dashboard_queue", "dashboard_latest_jobs", "dashboard_failures", "dashboard_throughput")
IN_FLIGHT = 40


def seed(url: str, pending: int, history: int) -> None:
    """The backlog, the jobs in flight (half of them on RunPod) and the last hour's history."""
    batches = [
        ("pending", "pending", "2 hours", pending, 0.01),
        ("taken", "taken", "10 minutes", IN_FLIGHT // 2, 0),
        ("processing", "taken", "10 minutes", IN_FLIGHT - IN_FLIGHT // 2, 0),
        ("failed", "failed", "1 hour", int(history * HISTORY_SHARE_FAILED), 0),
        ("completed", "completed", "1 hour", history - int(history * HISTORY_SHARE_FAILED), 0),
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        for work_status, job_status, age, n, delayed in batches:
            conn.execute(
                FILL,
                {
                    "template": KLEIN_TEMPLATE_ID,
                    "work_status": work_status,
                    "job_status": job_status,
                    "age": age,
                    "n": n,
                    "delayed": delayed,
                },
            )
        conn.execute(
            "UPDATE works SET failed_at = now(), error_message = 'boom' WHERE status = 'failed'"
        )
        conn.execute("VACUUM ANALYZE")


async def read_once(url: str) -> dict[str, Any]:
    """One whole snapshot read, on a connection of its own."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await snapshot.read_snapshot(conn, KLEIN_TEMPLATE_ID, jobs=50)


async def timed_reads(url: str, runs: int) -> list[float]:
    """Milliseconds of each whole read (a refresh of a stale shared snapshot), all on one open
    connection as the dashboard's own is."""
    took = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for _ in range(runs):
            begun = time.perf_counter()
            await snapshot.read_snapshot(conn, KLEIN_TEMPLATE_ID, jobs=50)
            took.append((time.perf_counter() - begun) * 1000)
    return took


def query_params(name: str) -> dict[str, Any]:
    """What each dashboard query is given by the snapshot read."""
    params: dict[str, Any] = {"template_id": KLEIN_TEMPLATE_ID}
    if name == "dashboard_latest_jobs":
        params["limit"] = 50
    if name == "dashboard_failures":
        params |= {"window_s": snapshot.FAILURE_WINDOW_S, "limit": snapshot.FAILURE_REASONS_SHOWN}
    if name == "dashboard_throughput":
        params["window_s"] = snapshot.THROUGHPUT_WINDOW_S
    if name == "dashboard_queue":
        params["cap"] = snapshot.QUEUE_COUNT_CAP
    return params


def time_queries(url: str, runs: int, plans: bool) -> dict[str, list[float]]:
    """Milliseconds of each dashboard query alone (statements that set things up left out)."""
    took: dict[str, list[float]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for name in QUERIES:
            statement, params = queries()[name], query_params(name)
            took[name] = []
            for _ in range(runs):
                begun = time.perf_counter()
                conn.execute(statement, params).fetchall()
                took[name].append((time.perf_counter() - begun) * 1000)
            if plans:
                plan = conn.execute("EXPLAIN (ANALYZE, COSTS OFF) " + statement, params)
                print(f"-- {name}")
                print("\n".join(row[0] for row in plan if "never executed" not in row[0]))
    return took


def shown(queue: dict[str, Any], stage: str) -> str:
    """A stage's count as the page shows it ("1000+" past the cap)."""
    more = "+" if f"{stage}.count" in queue["over_cap"] else ""
    return f"{queue[stage]['count']}{more}"


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f} ms, runs " + ", ".join(
        f"{ms:.1f}" for ms in values
    )


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(
        prog="python -m bench.dashboard_backlog", description=__doc__.splitlines()[0]
    )
    options.add_argument("--pending", type=int, default=400_000, help="jobs waiting to be claimed")
    options.add_argument("--history", type=int, default=10_000, help="jobs ended in the last hour")
    options.add_argument("--runs", type=int, default=5)
    options.add_argument("--plans", action="store_true", help="print each query's plan")
    options.add_argument("--server", default=DEFAULT_SERVER)
    args = options.parse_args(argv)
    with scratch_database(args.server) as url:
        begun = time.perf_counter()
        seed(url, args.pending, args.history)
        print(
            f"{server_version(url)}; seeded in {time.perf_counter() - begun:.0f} s:"
            f" {args.pending:,} pending, {IN_FLIGHT} in flight, {args.history:,} ended"
        )
        queue = asyncio.run(read_once(url))["queue"]
        print("shown:", ", ".join(f"{stage} {shown(queue, stage)}" for stage in QUEUE_STAGES))
        reads = asyncio.run(timed_reads(url, args.runs))
        by_query = time_queries(url, args.runs, args.plans)
    print(f"snapshot read: {summary(reads)}")
    for name, values in by_query.items():
        print(f"  {name}: {summary(values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
