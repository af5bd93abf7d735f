"""Claiming jobs and keeping them: one statement to claim, one to renew every lease we hold."""

from orchestrator.db import Database
from orchestrator.jobs import ClaimedJob


async def claim_jobs(
    db: Database, *, template_id: str, worker_id: str, lease_s: float, limit: int
) -> list[ClaimedJob]:
    """Take up to `limit` due jobs (pending, or abandoned by a dead holder), best first."""
    if limit <= 0:
        return []
    rows = await db.all(
        "claim_jobs", template_id=template_id, worker_id=worker_id, lease_s=lease_s, limit=limit
    )
    return [ClaimedJob.from_row(row) for row in rows]


async def renew_leases(
    db: Database, *, job_ids: list[str], worker_id: str, lease_s: float
) -> set[str]:
    """Extend the leases of the given jobs (the ones a live task drives); returns those held."""
    if not job_ids:
        return set()
    rows = await db.all("renew_leases", job_ids=job_ids, worker_id=worker_id, lease_s=lease_s)
    return {str(row["id"]) for row in rows}


async def release_job(db: Database, *, job_id: str, worker_id: str) -> bool:
    """End our lease on a job now, so another process resumes it without waiting."""
    return await db.one("release_job", job_id=job_id, worker_id=worker_id) is not None
