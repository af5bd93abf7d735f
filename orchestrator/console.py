"""`klein submit` and `klein status`: what the web app does, from a terminal."""

import base64
import functools
import json
import os
import re
import stat
import sys
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from handler.contract import IMAGE_BASE64_MAX_CHARS, base64_too_large, is_http_url, parse_input
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
# The largest file whose base64 fits the /run body RunPod accepts (the contract's own cap).
LOCAL_IMAGE_MAX_BYTES = IMAGE_BASE64_MAX_CHARS // 4 * 3
# Characters a terminal acts on instead of showing: controls (escape sequences among them, C1
# too) and format characters (bidi overrides that reorder what follows them).
UNSHOWN_CATEGORIES = frozenset({"Cc", "Cf"})


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
    """A local image's bytes, refused here (InvalidInput) if it is not one: no job is created.
    Only a regular file is read, and no more of it than the cap: a device (/dev/zero), a FIFO or
    a folder is refused at once, without blocking on it or reading it whole."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO without a writer: no wait
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except OSError as exc:
        raise InvalidInput(unreadable(path, exc)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise InvalidInput(f"{path}: {kind}; give an image file")
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(LOCAL_IMAGE_MAX_BYTES + 1)  # the file may grow while it is read
    except OSError as exc:
        raise InvalidInput(unreadable(path, exc)) from None
    finally:
        os.close(fd)
    if not data:
        raise InvalidInput(f"{path}: the file is empty")
    if len(data) > LOCAL_IMAGE_MAX_BYTES:
        raise InvalidInput(f"{path}: {base64_too_large()}")
    try:
        verify_image(data)
    except InvalidInput as exc:
        raise InvalidInput(f"{path}: {exc}") from None
    return data


def unreadable(path: Path, exc: OSError) -> str:
    """Why a local file could not be read, in one sentence."""
    return f"{path}: cannot be read ({exc.strerror or type(exc).__name__})"


@functools.cache
def unshown() -> re.Pattern[str]:
    """One character of UNSHOWN_CATEGORIES (built once, when first needed: about 0.2 s)."""
    codes = [
        code
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)) in UNSHOWN_CATEGORIES
    ]
    ranges, start = [], codes[0]
    for before, code in zip(codes, [*codes[1:], -1], strict=True):
        if code != before + 1:  # a run of consecutive code points ends at `before`
            ranges.append(f"{re.escape(chr(start))}-{re.escape(chr(before))}")
            start = code
    return re.compile(f"[{''.join(ranges)}]")


def shown(text: str) -> str:
    """`text` safe to print on a terminal: each character it would act on instead of showing
    (an escape sequence's ESC, a bidi override, a carriage return) written as its escape, as
    repr() writes it. Rows hold what others wrote: titles from a model, errors from ComfyUI."""
    if text.isprintable():
        return text
    return unshown().sub(lambda found: repr(found[0])[1:-1], text)


def submit(conn: psycopg.Connection[Any], request: SubmitRequest) -> tuple[str, str]:
    """Check the request, then insert its rows; returns (job_id, work_id)."""
    return insert(conn, request, input_data(request.image, request.prompt, request.options))


def insert(
    conn: psycopg.Connection[Any], request: SubmitRequest, data: dict[str, Any]
) -> tuple[str, str]:
    """Insert the works and generation_jobs rows for `data`, input_data's checked answer;
    returns (job_id, work_id)."""
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
    output = row.get("output_data_json")
    url = row.get("image_url") or (output.get("image_url") if isinstance(output, dict) else None)
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
    return shown(line)


def as_json(row: dict[str, Any]) -> str:
    """A row as JSON (datetimes as text). What a terminal would act on is escaped as JSON would
    with ensure_ascii: JSON itself escapes only the C0 controls, and the layout's newlines stay."""
    text = json.dumps(row, default=str, ensure_ascii=False, indent=2)
    if text.replace("\n", "").isprintable():
        return text
    return unshown().sub(json_escape, text)


def json_escape(found: re.Match[str]) -> str:
    """A character as JSON writes it with ensure_ascii; the layout's newlines as they are (one
    inside a string is written \\n already)."""
    char = found[0]
    return char if char == "\n" else json.dumps(char)[1:-1]
