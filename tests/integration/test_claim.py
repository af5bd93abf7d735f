"""Claims, leases and fencing against real PostgreSQL."""

import asyncio
import uuid

import psycopg
import pytest

from orchestrator.claim import claim_jobs, release_job, renew_leases
from orchestrator.db import Database
from orchestrator.settings import KLEIN_TEMPLATE_ID

OTHER_TEMPLATE = "11111111-1111-1111-1111-111111111111"


def insert_job(
    url: str, *, priority: int = 0, template_id: str = KLEIN_TEMPLATE_ID, age_s: int = 0
) -> str:
    work_id, job_id = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO templates (id, template_name, is_active) VALUES (%s, 'other', true) "
            "ON CONFLICT DO NOTHING",
            (OTHER_TEMPLATE,),
        )
        conn.execute(
            "INSERT INTO works (id, user_id, template_id, input_data, status) "
            "VALUES (%s, %s, %s, '{\"prompt\": \"p\"}', 'pending')",
            (work_id, uuid.uuid4(), template_id),
        )
        conn.execute(
            "INSERT INTO generation_jobs (id, work_id, status, priority, created_at) "
            "VALUES (%s, %s, 'pending', %s, now() - make_interval(secs => %s))",
            (job_id, work_id, priority, age_s),
        )
    return str(job_id)


def run(coro):
    return asyncio.run(coro)


async def with_db(url, action):
    db = Database(url)
    await db.open()
    try:
        return await action(db)
    finally:
        await db.close()


def claim(url, worker="w1", limit=10, lease_s=30.0):
    async def action(db):
        jobs = await claim_jobs(
            db, template_id=KLEIN_TEMPLATE_ID, worker_id=worker, lease_s=lease_s, limit=limit
        )
        return [job.id for job in jobs]

    return run(with_db(url, action))


def test_claims_by_priority_then_age_and_only_klein_jobs(migrated_url):
    old_low = insert_job(migrated_url, priority=0, age_s=100)
    new_high = insert_job(migrated_url, priority=5, age_s=1)
    old_high = insert_job(migrated_url, priority=5, age_s=50)
    insert_job(migrated_url, priority=9, template_id=OTHER_TEMPLATE)
    assert claim(migrated_url) == [old_high, new_high, old_low]


def test_inactive_template_jobs_are_not_claimed(migrated_url):
    insert_job(migrated_url)
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute("UPDATE templates SET is_active = false WHERE id = %s", (KLEIN_TEMPLATE_ID,))
    assert claim(migrated_url) == []


def test_claim_marks_job_taken_and_work_taken_with_owner_and_lease(migrated_url):
    job_id = insert_job(migrated_url)
    claim(migrated_url, worker="w1")
    with psycopg.connect(migrated_url) as conn:
        row = conn.execute(
            "SELECT j.status, j.locked_by, j.taken_at IS NOT NULL, j.lease_expires_at > now(), "
            "w.status FROM generation_jobs j JOIN works w ON w.id = j.work_id WHERE j.id = %s",
            (job_id,),
        ).fetchone()
    assert row == ("taken", "w1", True, True, "taken")


def test_two_claimers_never_get_the_same_job(migrated_url):
    jobs = {insert_job(migrated_url) for _ in range(40)}

    async def race(db):
        batches = await asyncio.gather(
            *(
                claim_jobs(
                    db, template_id=KLEIN_TEMPLATE_ID, worker_id=f"w{i}", lease_s=30, limit=7
                )
                for i in range(8)
            )
        )
        return [job.id for batch in batches for job in batch]

    claimed = run(with_db(migrated_url, race))
    assert len(claimed) == len(set(claimed)) == 40
    assert set(claimed) == jobs


def test_a_held_job_is_not_claimed_again(migrated_url):
    insert_job(migrated_url)
    assert len(claim(migrated_url, worker="w1")) == 1
    assert claim(migrated_url, worker="w2") == []


def test_an_expired_lease_hands_the_job_to_another_process_at_its_stage(migrated_url):
    job_id = insert_job(migrated_url)
    claim(migrated_url, worker="dead", lease_s=0.01)
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE generation_jobs SET runpod_job_id = 'rp-1', submitted_at = now() WHERE id = %s",
            (job_id,),
        )
    run(asyncio.sleep(0.05))

    async def take(db):
        return await claim_jobs(
            db, template_id=KLEIN_TEMPLATE_ID, worker_id="alive", lease_s=30, limit=5
        )

    [job] = run(with_db(migrated_url, take))
    assert job.id == job_id
    assert job.runpod_job_id == "rp-1"


def claim_ms(url: str, job_id: str) -> int | None:
    with psycopg.connect(url) as conn:
        [(ms,)] = conn.execute(
            "SELECT (timings->>'claim')::int FROM generation_jobs WHERE id = %s", (job_id,)
        ).fetchall()
    return ms


def test_the_claim_records_how_long_the_job_waited_since_it_was_due(migrated_url):
    """The dashboard's claim timing: from when the job was due (its insert, or the end of a
    retry's delay) to its claim; a lease taken over later keeps it."""
    waited = insert_job(migrated_url, age_s=5)
    deferred = insert_job(migrated_url, age_s=60)
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE generation_jobs SET not_before = now() - interval '2 seconds' WHERE id = %s",
            (deferred,),
        )
    claim(migrated_url, worker="dead", lease_s=0.01)
    first = claim_ms(migrated_url, waited), claim_ms(migrated_url, deferred)
    run(asyncio.sleep(0.05))
    assert len(claim(migrated_url, worker="alive")) == 2

    assert 5000 <= first[0] < 6000
    assert 2000 <= first[1] < 3000
    assert (claim_ms(migrated_url, waited), claim_ms(migrated_url, deferred)) == first


def test_renewal_reports_what_this_process_still_holds(migrated_url):
    mine = insert_job(migrated_url)
    claim(migrated_url, worker="w1", lease_s=0.01)
    run(asyncio.sleep(0.05))
    assert claim(migrated_url, worker="w2") == [mine]

    async def renew(db):
        return await renew_leases(
            db, job_ids=[mine], worker_id="w1", lease_s=30
        ), await renew_leases(db, job_ids=[mine], worker_id="w2", lease_s=30)

    held_by_w1, held_by_w2 = run(with_db(migrated_url, renew))
    assert held_by_w1 == set()
    assert held_by_w2 == {mine}


def test_a_fenced_out_process_cannot_finish_the_job(migrated_url):
    job_id = insert_job(migrated_url)
    claim(migrated_url, worker="w1", lease_s=0.01)
    run(asyncio.sleep(0.05))
    claim(migrated_url, worker="w2")

    async def finish(db):
        stale = await db.one(
            "finish_job", job_id=job_id, worker_id="w1", status="completed", error=None
        )
        fresh = await db.one(
            "finish_job", job_id=job_id, worker_id="w2", status="completed", error=None
        )
        return stale, fresh

    stale, fresh = run(with_db(migrated_url, finish))
    assert stale is None
    assert fresh is not None


def test_release_lets_another_process_resume_at_once(migrated_url):
    job_id = insert_job(migrated_url)
    claim(migrated_url, worker="w1")

    async def release(db):
        return await release_job(db, job_id=job_id, worker_id="w1")

    assert run(with_db(migrated_url, release)) is True
    assert claim(migrated_url, worker="w2") == [job_id]


@pytest.mark.parametrize("limit", [0, -1])
def test_no_room_claims_nothing(migrated_url, limit):
    insert_job(migrated_url)
    assert claim(migrated_url, limit=limit) == []
