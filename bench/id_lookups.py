"""What finding one job costs against a long history: `klein status ID` (job_status), and the id
or id prefix that `klein status`, `cancel` and `retry` resolve (jobs_by_id, jobs_by_id_prefix).
`klein submit --wait` runs job_status twice a second for as long as it follows a job.

A fresh database holds `--jobs` completed works, each with its job. Each statement runs `--runs`
times with ids of rows picked at random: a whole job id, a whole work id, an 8- and a 4-character
prefix. The report is the median of each, and the plan of the prefix lookup.

    .venv/bin/python -m bench.id_lookups [--jobs 600000] [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import psycopg

from bench.sweep_cost import FILL, migrate
from orchestrator.console_ops import id_range
from orchestrator.db import queries
from orchestrator.settings import KLEIN_TEMPLATE_ID
from tests.pg import fresh_database, server_url


def median_ms(conn: psycopg.Connection[Any], name: str, params: list[dict[str, str]]) -> float:
    """The median time of the named statement over `params`, one run each."""
    runs = []
    for one in params:
        begun = time.perf_counter()
        conn.execute(queries()[name], one).fetchall()
        runs.append((time.perf_counter() - begun) * 1000)
    return statistics.median(runs)


def prefix_params(ids: list[str], chars: int) -> list[dict[str, str]]:
    params = []
    for ident in ids:
        found = id_range(ident[:chars])
        assert found is not None
        params.append({"low": found[0], "high": found[1]})
    return params


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--jobs", type=int, default=600_000)
    options.add_argument("--runs", type=int, default=20)
    args = options.parse_args()
    with fresh_database(server_url()) as url:
        asyncio.run(migrate(url))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                FILL, {"template": KLEIN_TEMPLATE_ID, "status": "completed", "n": args.jobs}
            )
            conn.execute("ANALYZE")
            picked = conn.execute(
                "SELECT id::text, work_id::text FROM generation_jobs ORDER BY random() LIMIT %s",
                (args.runs,),
            ).fetchall()
            job_ids = [row[0] for row in picked]
            work_ids = [row[1] for row in picked]
            figures = {
                "job_status, a job id": median_ms(conn, "job_status", [{"id": i} for i in job_ids]),
                "job_status, a work id": median_ms(
                    conn, "job_status", [{"id": i} for i in work_ids]
                ),
                "jobs_by_id, a work id": median_ms(
                    conn, "jobs_by_id", [{"id": i} for i in work_ids]
                ),
                "jobs_by_id_prefix, 8 characters": median_ms(
                    conn, "jobs_by_id_prefix", prefix_params(job_ids, 8)
                ),
                "jobs_by_id_prefix, 4 characters": median_ms(
                    conn, "jobs_by_id_prefix", prefix_params(work_ids, 4)
                ),
            }
            plan = conn.execute(
                "EXPLAIN (ANALYZE, COSTS OFF) " + queries()["jobs_by_id_prefix"],
                prefix_params(job_ids, 8)[0],
            ).fetchall()
    print(f"{args.jobs:,} jobs, {args.runs} lookups each")
    for label, ms in figures.items():
        print(f"  {label:<34} median {ms:.2f} ms")
    print("\n".join(row[0] for row in plan if "never executed" not in row[0]))


if __name__ == "__main__":
    main()
