"""`klein submit` and `klein status`: what the web app does, from a terminal."""

import base64
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from handler.contract import is_http_url, parse_input
from handler.contract.errors import InvalidInput
from handler.contract.images import verify_image
from orchestrator.db import queries

FINISHED = ("completed", "failed", "cancelled")
LABELS = {
    "pending": "queued",
    "taken": "starting...",
    "processing": "generating...",
    "completed": "done",
    "failed": "failed",
    "cancelled": "cancelled",
}


@dataclass(frozen=True)
class SubmitRequest:
    """One job as the web app would create it."""

    image: str
    prompt: str
    user_id: str
    template_id: str
    priority: int = 0
    options: dict[str, Any] | None = None


def input_data(image: str, prompt: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """`works.input_data`: the image as image_url (a URL) or image_base64 (a file's bytes),
    checked against the worker's own contract (InvalidInput, before any row is written)."""
    data: dict[str, Any] = {"prompt": prompt, **(options or {})}
    if is_http_url(image):
        data["image_url"] = image
    else:
        data["image_base64"] = base64.b64encode(read_image(Path(image))).decode("ascii")
    parse_input(data, draw_seed=lambda: 0)
    return data


def read_image(path: Path) -> bytes:
    """A local image's bytes, refused here (InvalidInput) if it is not one: no job is created."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except OSError as exc:
        raise InvalidInput(
            f"{path}: cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None
    if not data:
        raise InvalidInput(f"{path}: the file is empty")
    try:
        verify_image(data)
    except InvalidInput as exc:
        raise InvalidInput(f"{path}: {exc}") from None
    return data


def submit(conn: psycopg.Connection[Any], request: SubmitRequest) -> tuple[str, str]:
    """Insert the works and generation_jobs rows; returns (job_id, work_id)."""
    data = input_data(request.image, request.prompt, request.options)
    work_id, job_id = str(uuid.uuid4()), str(uuid.uuid4())
    with conn.transaction():
        conn.execute(
            queries()["insert_work"],
            {
                "work_id": work_id,
                "user_id": request.user_id,
                "template_id": request.template_id,
                "input_data": Jsonb(data),
            },
        )
        conn.execute(
            queries()["insert_job"],
            {"job_id": job_id, "work_id": work_id, "priority": request.priority},
        )
    return job_id, work_id


def job_status(conn: psycopg.Connection[Any], job_or_work_id: str) -> dict[str, Any] | None:
    """The job and its work, by either id."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(queries()["job_status"], {"id": job_or_work_id})
        return cursor.fetchone()


def recent(conn: psycopg.Connection[Any], limit: int = 20) -> list[dict[str, Any]]:
    """The latest jobs, newest first."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(queries()["recent_jobs"], {"limit": limit})
        return cursor.fetchall()


def image_url(row: dict[str, Any]) -> str | None:
    """A completed job's image URL."""
    url = row.get("image_url") or (row.get("output_data_json") or {}).get("image_url")
    return str(url) if url else None


def shown_status(row: dict[str, Any]) -> str:
    """The work's status, as the web app shows it; but a job that ended while its work goes on
    (the work was retried as a new job) shows its own end, not its successor's state."""
    job, work = row["job_status"], row["work_status"]
    if job in FINISHED and work not in FINISHED:
        return str(job)
    return str(work or job)


def describe(row: dict[str, Any]) -> str:
    """One line for a job's state, as the web app's UI would show it."""
    status = shown_status(row)
    line = f"{row['job_id']}  {LABELS.get(status, status)}"
    if status == "completed":
        line += f"  {row.get('title')!r}  {image_url(row)}"
    elif status == "failed" and row.get("error_message"):
        line += f"  {row['error_message']}"
    if row["work_status"] and status != row["work_status"]:
        line += f"  (work {row['work_id']} was retried; it is {row['work_status']})"
    return line


def as_json(row: dict[str, Any]) -> str:
    """A row as JSON (datetimes as text)."""
    return json.dumps(row, default=str, ensure_ascii=False, indent=2)
