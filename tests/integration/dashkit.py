"""Jobs in every state a person can see on the dashboard, written as the flow writes them (plain
SQL on the real schema). Shared by test_dashboard.py and the browser test."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from orchestrator.settings import KLEIN_TEMPLATE_ID

# Markup, a script and an event handler: the page must show it as text and run none of it.
HOSTILE_PROMPT = (
    '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
    "\"'><b>bold?</b> 배경을 바꿔줘"
)
OOM = "Processing failed: KSamplerAdvanced: CUDA out of memory"
BAD_STEPS = "Invalid parameter: steps must be between 1 and 40"
RETRY_ERROR = "RunPod answered HTTP 503 on run"
FULL_TIMINGS = {
    "claim": 4,
    "translate": 310,
    "submit": 45,
    "runpod_queue": 1200,
    "gpu": 2400,
    "store": 30,
    "title": 500,
    "finalize": 12,
}


def progress(step: int, steps: int = 4) -> dict[str, Any]:
    """A works.progress value (the migration's shape)."""
    return {
        "stage": "sampling",
        "node": "KSamplerAdvanced",
        "step": step,
        "steps": steps,
        "at": "2026-12-03T06:40:00Z",
    }


@dataclass
class Seeded:
    """The ids of the seeded jobs, by what they show."""

    jobs: dict[str, str] = field(default_factory=dict)  # name -> job id
    works: dict[str, str] = field(default_factory=dict)  # name -> work id


def add_job(
    conn: psycopg.Connection[Any],
    seeded: Seeded,
    name: str,
    *,
    prompt: str,
    job: dict[str, Any],
    work: dict[str, Any],
    age_s: float = 0,
) -> None:
    """A Klein work and its job with the given columns, created `age_s` seconds ago."""
    work_id, job_id, user_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    work = {"status": "pending", **work}
    job = {"status": "pending", **job}
    work_columns = ", ".join(work)
    conn.execute(
        f"INSERT INTO works (id, user_id, template_id, input_data, created_at, {work_columns})"
        f" VALUES (%s, %s, %s, %s, now() - make_interval(secs => %s),"
        f" {', '.join(['%s'] * len(work))})",
        (work_id, user_id, KLEIN_TEMPLATE_ID, Jsonb({"prompt": prompt}), age_s, *_values(work)),
    )
    job_columns = ", ".join(job)
    conn.execute(
        f"INSERT INTO generation_jobs (id, work_id, created_at, {job_columns})"
        f" VALUES (%s, %s, now() - make_interval(secs => %s), {', '.join(['%s'] * len(job))})",
        (job_id, work_id, age_s, *_values(job)),
    )
    seeded.jobs[name], seeded.works[name] = str(job_id), str(work_id)


def _values(columns: dict[str, Any]) -> list[Any]:
    return [Jsonb(v) if isinstance(v, dict) else v for v in columns.values()]


def seed_every_state(url: str) -> Seeded:
    """pending, delayed (retrying), taken, processing (with progress), failed (three, two of one
    reason), cancelled, completed (with an image and every timing), and a hostile prompt."""
    seeded = Seeded()
    finished = {"finished_at": "now"}
    with psycopg.connect(url, autocommit=True) as conn:
        add_job(conn, seeded, "pending", prompt="make it snow", job={}, work={}, age_s=30)
        add_job(
            conn,
            seeded,
            "delayed",
            prompt="add a rainbow",
            job={"retries": 1, "last_error": RETRY_ERROR, "not_before": "2999-01-01T00:00:00Z"},
            work={},
            age_s=400,
        )
        held = {"status": "taken", "locked_by": "w-other", "taken_at": "now"}
        add_job(conn, seeded, "taken", prompt="paint it blue", job=held, work={"status": "taken"})
        add_job(
            conn,
            seeded,
            "processing",
            prompt="배경을 해변으로 바꿔줘",
            job=held | {"runpod_job_id": "rp-1", "timings": {"claim": 3, "translate": 200}},
            work={
                "status": "processing",
                "progress": progress(2),
                "generation_metadata": {
                    "original_prompt": "배경을 해변으로 바꿔줘",
                    "prompt": "Change the background to a beach",
                    "translation": "llm",
                },
            },
            age_s=20,
        )
        for name, reason in (("failed", OOM), ("failed-again", OOM), ("failed-input", BAD_STEPS)):
            add_job(
                conn,
                seeded,
                name,
                prompt="x",
                job={"status": "failed", "last_error": reason, **finished},
                work={"status": "failed", "error_message": reason, "failed_at": "now"},
            )
        add_job(
            conn,
            seeded,
            "cancelled",
            prompt="never mind",
            job={"status": "cancelled", **finished},
            work={"status": "cancelled", "cancelled_at": "now"},
        )
        add_job(conn, seeded, "hostile", prompt=HOSTILE_PROMPT, job={}, work={})
    return seeded


def complete_by_sql(url: str, name: str, seeded: Seeded, image_url: str, age_s: float) -> None:
    """A completed job and work with a files row pointing at image_url, asked for age_s ago."""
    file_id = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO files (id, user_id, bucket_id, path, width, height, file_url)"
            " VALUES (%s, %s, 'works', 'p/output.png', 96, 64, %s)",
            (file_id, uuid.uuid4(), image_url),
        )
        add_job(
            conn,
            seeded,
            name,
            prompt="make the sky purple",
            job={"status": "completed", "timings": FULL_TIMINGS, "finished_at": "now"},
            work={
                "status": "completed",
                "title": "보라빛 하늘",
                "output_file_id": file_id,
                "thumbnail_file_id": file_id,
                "output_data_json": {"image_url": image_url},
                "completed_at": "now",
            },
            age_s=age_s,
        )
