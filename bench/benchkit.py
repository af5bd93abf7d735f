"""What the benchmarks share: a scratch database on the local PostgreSQL, migrated the way
`klein migrate` does it, the web app's inserts, and a median-and-spread summary of repeated runs.

Not a benchmark itself; the scripts beside it import it (run them from the repository root with
`python -m bench.<name>`).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from orchestrator.db import queries
from orchestrator.migrate import apply_migrations, migrations_dir
from orchestrator.settings import KLEIN_TEMPLATE_ID
from tests.pg import drop_database, with_dbname

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
CONNECT_TIMEOUT_S = 5


class BenchError(RuntimeError):
    """The benchmark could not run, or its correctness check failed; the message says which."""


@contextmanager
def scratch_database(server: str) -> Iterator[str]:
    """A fresh, migrated database for the block (`klein_bench_*`), dropped afterwards."""
    name = f"klein_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(server, name)
    try:
        migrate(url)
        yield url
    finally:
        drop_database(server, url)


def migrate(url: str) -> list[str]:
    """Apply the repository's migrations (idempotent), as `klein migrate` does."""

    async def run() -> list[str]:
        async with await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
        ) as conn:
            return await apply_migrations(conn, migrations_dir())

    return asyncio.run(run())


@dataclass(frozen=True)
class NewJob:
    """One pending work and its job, as the web app inserts them."""

    job_id: str
    work_id: str
    user_id: str


def new_jobs(count: int) -> list[NewJob]:
    """Fresh ids for `count` works and their jobs (each work its own user)."""
    return [NewJob(str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(count)]


def insert_jobs(
    conn: psycopg.Connection[Any],
    jobs: Sequence[NewJob],
    input_data: dict[str, Any] | Callable[[NewJob], dict[str, Any]],
) -> None:
    """The web app's inserts (the named queries `klein submit` uses), in the open transaction;
    `input_data` is every work's, or a function giving each work its own."""
    input_of = input_data if callable(input_data) else lambda _: input_data
    with conn.cursor() as cursor:
        cursor.executemany(
            queries()["insert_work"],
            [
                {
                    "work_id": job.work_id,
                    "user_id": job.user_id,
                    "template_id": KLEIN_TEMPLATE_ID,
                    "input_data": Jsonb(input_of(job)),
                }
                for job in jobs
            ],
        )
        cursor.executemany(
            queries()["insert_job"],
            [{"job_id": job.job_id, "work_id": job.work_id, "priority": 0} for job in jobs],
        )


def server_version(url: str) -> str:
    """`PostgreSQL 15.x`, as the server names itself."""
    with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        row = conn.execute("SELECT current_setting('server_version')").fetchone()
    return f"PostgreSQL {str(row[0]).split()[0] if row else '?'}"


def spread(values: Sequence[float]) -> str:
    """`median (min-max)` of repeated runs; a single run is just its value."""
    if len(values) == 1:
        return f"{values[0]:.4g}"
    low, high = min(values), max(values)
    return f"{statistics.median(values):.4g} ({low:.4g}-{high:.4g})"


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` in 0..1) of a sample; NaN for an empty one."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def print_table(title: str, rows: Sequence[tuple[str, str]]) -> None:
    """A two-column table: what, and its value."""
    print(title)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def calls_and_rounds(
    argv: list[str] | None, prog: str, doc: str, *, calls: int, kind: str, turns: str
) -> argparse.Namespace:
    """The per-call benchmarks' flags: `--calls` of each `kind` per round, and `--rounds`, in
    which `turns` (the variants measured) alternate."""
    description = doc.split("\n", maxsplit=1)[0]
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=description)
    parser.add_argument("--calls", type=int, default=calls, help=f"calls of each {kind} per round")
    parser.add_argument("--rounds", type=int, default=3, help=f"rounds, {turns} alternating")
    return parser.parse_args(argv)
