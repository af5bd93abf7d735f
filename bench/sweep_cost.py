"""What the periodic sweep's statement (settle_unclaimed_cancellations, run every
SWEEP_INTERVAL_S by every `klein serve`) costs against a long history.

A fresh database holds `--history` finished works (half cancelled, half completed, each with its
job) and `--queue` pending ones; nothing is due, so the statement only looks. It runs `--runs`
times; the report is each run's time and the plan of the last, so a sequential scan over the
history shows.

    .venv/bin/python -m bench.sweep_cost [--history 1000000] [--queue 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import psycopg

from orchestrator.db import queries
from orchestrator.migrate import apply_migrations, migrations_dir
from orchestrator.settings import KLEIN_TEMPLATE_ID
from tests.pg import fresh_database, server_url

FILL = """
WITH w AS (
    INSERT INTO works (user_id, template_id, input_data, status)
    SELECT gen_random_uuid(), %(template)s, '{}', %(status)s FROM generate_series(1, %(n)s)
    RETURNING id
)
INSERT INTO generation_jobs (work_id, status) SELECT id, %(status)s FROM w
"""


async def migrate(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await apply_migrations(conn, migrations_dir())


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--history", type=int, default=1_000_000)
    options.add_argument("--queue", type=int, default=1000)
    options.add_argument("--runs", type=int, default=5)
    args = options.parse_args()
    statement = queries()["settle_unclaimed_cancellations"]
    with fresh_database(server_url()) as url:
        asyncio.run(migrate(url))
        with psycopg.connect(url, autocommit=True) as conn:
            for status, n in (
                ("cancelled", args.history // 2),
                ("completed", args.history - args.history // 2),
                ("pending", args.queue),
            ):
                conn.execute(FILL, {"template": KLEIN_TEMPLATE_ID, "status": status, "n": n})
            conn.execute("ANALYZE")
            runs_ms = []
            for _ in range(args.runs):
                begun = time.perf_counter()
                conn.execute(statement).fetchall()
                runs_ms.append((time.perf_counter() - begun) * 1000)
            plan = conn.execute("EXPLAIN (ANALYZE, COSTS OFF) " + statement).fetchall()
    print(f"history {args.history:,} works, queue {args.queue:,}")
    print(
        f"sweep: median {statistics.median(runs_ms):.1f} ms, runs "
        + ", ".join(f"{ms:.1f}" for ms in runs_ms)
    )
    print("\n".join(row[0] for row in plan if "never executed" not in row[0]))


if __name__ == "__main__":
    main()
