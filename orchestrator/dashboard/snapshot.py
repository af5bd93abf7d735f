"""What the dashboard shows, read in one read-only transaction and shaped into plain JSON."""

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from psycopg import AsyncConnection

from orchestrator.db import Row, fetch_all, fetch_one
from orchestrator.timings import STAGES

QUEUE_STAGES = ("pending", "taken", "processing")
AGE_BUCKETS = ("under_1m", "from_1m_to_5m", "from_5m_to_15m", "over_15m")
FAILURE_WINDOW_S = 24 * 3600
THROUGHPUT_WINDOW_S = 3600
FAILURE_REASONS_SHOWN = 20
READ_DEADLINE_S = 3.0
# The pending jobs' figures are counted up to this many, so that a read costs the same whatever
# the backlog (dashboard_queue); past it the page says "1000+". The oldest one's age is exact.
# Each job counted costs a lookup of its work: 1,000 keep a read near 20 ms on 2 cores, where
# 10,000 took 150 ms (docs/benchmarks.md, section 4c); a queue of a thousand is a backlog anyway.
QUEUE_COUNT_CAP = 1_000


def plain(value: object) -> object:
    """A database value as JSON: datetimes as ISO-8601 UTC, decimals as floats."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Decimal):
        return float(value)
    return value


def shape_queue(rows: list[Row], cap: int = QUEUE_COUNT_CAP) -> dict[str, Any]:
    """Counts and oldest age per stage (zero when empty), and every open job by age. The pending
    row's counts stop one past `cap`: such a figure is shown as `cap` and named in `over_cap`
    (`pending.count`, `by_age.over_15m`), for the page to say "more than"."""
    over_cap: list[str] = []

    def figure(row: Mapping[str, Any], column: str, path: str) -> int:
        value = int(row.get(column) or 0)
        if row.get("stage") == "pending" and value > cap:
            over_cap.append(path)
            return cap
        return value

    by_stage = {row["stage"]: row for row in rows}
    queue: dict[str, Any] = {}
    for stage in QUEUE_STAGES:
        row = by_stage.get(stage, {})
        queue[stage] = {
            "count": figure(row, "jobs", f"{stage}.count"),
            "oldest_s": row.get("oldest_s"),
            "delayed": figure(row, "delayed", f"{stage}.delayed"),
        }
    queue["by_age"] = {
        bucket: sum(figure(row, bucket, f"by_age.{bucket}") for row in rows)
        for bucket in AGE_BUCKETS
    }
    queue["count_cap"] = cap
    queue["over_cap"] = over_cap
    return queue


def clean_timings(timings: object) -> dict[str, int]:
    """The known stages' durations, in stage order; anything else in the column is left out."""
    if not isinstance(timings, Mapping):
        return {}
    return {
        stage: int(timings[stage])
        for stage in STAGES
        if isinstance(timings.get(stage), int | float) and not isinstance(timings[stage], bool)
    }


def clean_progress(progress: object) -> dict[str, object] | None:
    """works.progress with its documented keys only (stage, node, step, steps, at)."""
    if not isinstance(progress, Mapping) or not isinstance(progress.get("stage"), str):
        return None
    return {key: progress.get(key) for key in ("stage", "node", "step", "steps", "at")}


def shape_job(row: Row) -> dict[str, Any]:
    """One job as the page draws it."""
    return {
        "job_id": str(row["job_id"]),
        "work_id": str(row["work_id"]),
        "status": row["work_status"] or row["job_status"],
        "job_status": row["job_status"],
        "title": row["title"],
        "thumbnail_url": row["thumbnail_url"],
        "prompt": row["prompt"],
        "sent_prompt": row["sent_prompt"],
        "translation": row["translation"],
        "progress": clean_progress(row["progress"]),
        "timings": clean_timings(row["timings"]),
        "error": row["error"],
        "attempts": row["attempts"],
        "retries": row["retries"],
        "created_at": plain(row["created_at"]),
        "finished_at": plain(row["finished_at"]),
        "age_s": row["age_s"],
    }


def shape_throughput(row: Row | None, window_s: float) -> dict[str, Any]:
    """Jobs ended in the window, completions per minute, and p50/p95 latency in seconds."""
    row = row or {}
    completed = int(row.get("completed") or 0)
    return {
        "window_s": window_s,
        "completed": completed,
        "failed": int(row.get("failed") or 0),
        "cancelled": int(row.get("cancelled") or 0),
        "per_minute": round(completed / (window_s / 60), 2),
        "p50_s": plain(row.get("p50_s")),
        "p95_s": plain(row.get("p95_s")),
    }


async def read_snapshot(conn: AsyncConnection[Any], template_id: str, jobs: int) -> dict[str, Any]:
    """Everything the page shows, consistent with itself (one read-only transaction on `conn`).
    Bounded by the server's statement timeout only: the caller holds the deadline
    (shared.SharedSnapshot)."""
    async with conn.transaction():
        await fetch_all(conn, "dashboard_read_only")
        await fetch_all(conn, "dashboard_deadline")
        queue = await fetch_all(
            conn, "dashboard_queue", template_id=template_id, cap=QUEUE_COUNT_CAP
        )
        latest = await fetch_all(conn, "dashboard_latest_jobs", template_id=template_id, limit=jobs)
        failures = await fetch_all(
            conn,
            "dashboard_failures",
            template_id=template_id,
            window_s=FAILURE_WINDOW_S,
            limit=FAILURE_REASONS_SHOWN,
        )
        hour = await fetch_one(
            conn, "dashboard_throughput", template_id=template_id, window_s=THROUGHPUT_WINDOW_S
        )
    return {
        "generated_at": plain(datetime.now(UTC)),
        "queue": shape_queue(queue, QUEUE_COUNT_CAP),
        "jobs": [shape_job(row) for row in latest],
        "failures": [
            {"reason": row["reason"], "count": row["works"], "last_at": plain(row["last_at"])}
            for row in failures
        ],
        "last_hour": shape_throughput(hour, THROUGHPUT_WINDOW_S),
    }
