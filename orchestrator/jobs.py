"""A job's types: statuses, the claimed row, and what is submitted to RunPod."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    """`generation_jobs.status`: pending -> taken -> completed | failed | cancelled."""

    PENDING = "pending"
    TAKEN = "taken"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class WorkStatus(StrEnum):
    """`works.status`: pending -> taken -> processing -> completed | failed | cancelled."""

    PENDING = "pending"
    TAKEN = "taken"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Outcome(StrEnum):
    """How one run of a job's flow in this process ended (the `klein_jobs_total` label)."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETRY_LATER = "retry_later"  # back to pending, due after a delay
    HANDED_OVER = "handed_over"  # another process holds it now, or it was released


@dataclass(frozen=True)
class ClaimedJob:
    """A job this process holds, with what the flow needs of its work."""

    id: str
    work_id: str
    user_id: str | None
    input_data: object
    work_status: WorkStatus
    runpod_job_id: str | None
    submitted_at: datetime | None
    submit_started_at: datetime | None
    attempts: int
    retries: int
    abandoned: int
    generation_metadata: Mapping[str, Any] | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "ClaimedJob":
        """From a claim_jobs row."""
        return cls(
            id=str(row["id"]),
            work_id=str(row["work_id"]),
            user_id=str(row["user_id"]) if row["user_id"] is not None else None,
            input_data=row["input_data"],
            work_status=WorkStatus(row["work_status"] or WorkStatus.PENDING),
            runpod_job_id=row["runpod_job_id"],
            submitted_at=row["submitted_at"],
            submit_started_at=row["submit_started_at"],
            attempts=row["attempts"],
            retries=row["retries"],
            abandoned=row["abandoned"],
            generation_metadata=row["generation_metadata"],
        )
