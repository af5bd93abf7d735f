"""The operator's commands, where the seed used hand-written SQL: id prefixes, `klein cancel`,
`klein retry`, `klein jobs --stuck`. Decisions (which job a prefix means, why a job is stuck)
are pure; the rest runs one named query each."""

import re
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from handler.contract.errors import InvalidInput
from orchestrator.db import queries

ID_PREFIX = re.compile(r"^[0-9a-f-]{1,36}$")
# NeedsOperator's sentences (runpod.py, openrouter.py, storage.py) all end in what to fix.
OPERATOR_ERROR = re.compile(r"check [A-Z_]+|out of credit|add funds", re.IGNORECASE)
DEFAULT_STUCK_AFTER_S = 900.0
ID_LAYOUT = "00000000-0000-0000-0000-000000000000"  # a UUID as PostgreSQL writes it


class NotFound(Exception):
    """No job or work has that id (exit 1)."""


@dataclass(frozen=True)
class Resolved:
    """The job (and its work) an id or id prefix names."""

    job_id: str
    work_id: str


def _rows(conn: psycopg.Connection[Any], name: str, **params: Any) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(queries()[name], params)
        return cursor.fetchall() if cursor.description else []


def pick(text: str, rows: list[dict[str, Any]]) -> Resolved:
    """Which job `text` names among the matching rows (newest first): one work, or InvalidInput
    when several works match, or NotFound when none does. A matched job id wins over its work's
    newest job."""
    works = {row["work_id"] for row in rows}
    if not works:
        raise NotFound(f"no job or work {text}")
    if len(works) > 1:
        raise InvalidInput(
            f"{text} is ambiguous: it starts {len(works)} jobs or works; give more of the id"
        )
    chosen = next((row for row in rows if row["job_matched"]), rows[0])
    return Resolved(job_id=chosen["job_id"], work_id=chosen["work_id"])


def resolve(conn: psycopg.Connection[Any], text: str) -> Resolved:
    """The job an id or an unambiguous id prefix (of a job or of a work) names."""
    prefix = text.strip().lower()
    if not ID_PREFIX.match(prefix):
        raise InvalidInput(f"not a job or work id: {text}")
    try:
        whole = uuid.UUID(prefix)  # a whole id in any accepted spelling
    except ValueError:
        found = id_range(prefix)
        rows = (
            [] if found is None else _rows(conn, "jobs_by_id_prefix", low=found[0], high=found[1])
        )
        return pick(text, rows)
    return pick(text, _rows(conn, "jobs_by_id", id=str(whole)))


def id_range(prefix: str) -> tuple[str, str] | None:
    """The first and last id that PostgreSQL writes starting with `prefix` (lowercase hex and
    dashes); None when none can: a dash out of its place, or a digit where a dash goes."""
    for char, slot in zip(prefix, ID_LAYOUT, strict=False):
        if (char == "-") != (slot == "-"):
            return None
    rest = ID_LAYOUT[len(prefix) :]
    return prefix + rest, prefix + rest.replace("0", "f")


@dataclass(frozen=True)
class Cancelled:
    """What `klein cancel` did to a work and its job."""

    work_id: str
    job_id: str
    work_cancelled: bool
    job_ended: bool
    runpod_job_id: str | None
    holder: str | None
    work_status: str


def cancel(conn: psycopg.Connection[Any], target: Resolved) -> Cancelled:
    """Cancel the work; end its job unless a live process holds it (that process ends it)."""
    with conn.transaction():
        [done] = _rows(conn, "operator_cancel", work_id=target.work_id, job_id=target.job_id)
        [seen] = _rows(conn, "operator_cancel_seen", job_id=target.job_id)
    return Cancelled(
        work_id=target.work_id,
        job_id=target.job_id,
        work_cancelled=done["works"] > 0,
        job_ended=done["jobs"] > 0,
        runpod_job_id=seen["runpod_job_id"],
        holder=seen["locked_by"],
        work_status=seen["work_status"],
    )


def cancel_line(done: Cancelled, runpod_problem: str | None) -> str:
    """What `klein cancel` did, in one line; `runpod_problem` is why RunPod's cancel failed."""
    line = f"cancelled work {done.work_id}"
    runpod = f"RunPod job {done.runpod_job_id}" if done.runpod_job_id else None
    if done.job_ended:
        line += f" and its job {done.job_id}"
    else:  # its holder cancels the RunPod job too; say so unless it was cancelled here
        stops = f"it and {runpod}" if runpod and runpod_problem else "it"
        line += f"; {done.holder}, which holds job {done.job_id}, stops {stops} within seconds"
    if runpod and (done.job_ended or runpod_problem is None):
        line += f"; {runpod} {runpod_problem or 'cancelled'}"
    return line


def retry(conn: psycopg.Connection[Any], work_id: str) -> str:
    """A new pending job for a failed or cancelled work; InvalidInput saying why not otherwise."""
    with conn.transaction():
        rows = _rows(conn, "operator_retry", work_id=work_id, job_id=str(uuid.uuid4()))
        if rows:
            return str(rows[0]["job_id"])
        [state] = _rows(conn, "work_state", work_id=work_id)
    if state["work_status"] in ("failed", "cancelled"):
        raise InvalidInput(f"work {work_id} still has a job running; wait for it to end")
    raise InvalidInput(
        f"work {work_id} is {state['work_status']}: only a failed or cancelled work is retried "
        "(`klein cancel` it first)"
    )


def stuck_reason(row: dict[str, Any], older_than_s: float) -> str | None:
    """Why an unfinished job needs an operator's look, in one line; None when it does not."""
    if row["status"] == "taken" and row["no_lease"]:
        return (
            "taken with no lease (a row the n8n workflow left): "
            "`klein cancel` it, then `klein retry`"
        )
    if row["status"] == "taken" and (row["lease_expired_s"] or 0) > 0:
        return (
            f"leased by {row['locked_by']}, whose lease expired {row['lease_expired_s']:.0f} s ago "
            "(a dead process); a running `klein serve` resumes it"
        )
    error = row["last_error"]
    if row["status"] == "pending" and error and OPERATOR_ERROR.search(error):
        return f"waiting for an operator: {error}"
    if row["status"] == "pending" and error and (row["due_in_s"] or 0) > 0:
        return f"retrying in {row['due_in_s']:.0f} s after: {error}"
    if row["age_s"] >= older_than_s:
        return f"{row['status']} for {row['age_s']:.0f} s (older than {older_than_s:g} s)"
    return None


def stuck(
    conn: psycopg.Connection[Any], older_than_s: float, limit: int = 100
) -> list[tuple[dict[str, Any], str]]:
    """Unfinished jobs that need a look, oldest first, each with its reason."""
    rows = _rows(conn, "stuck_candidates", older_than_s=older_than_s, limit=limit)
    found = [(row, stuck_reason(row, older_than_s)) for row in rows]
    return [(row, reason) for row, reason in found if reason is not None]
