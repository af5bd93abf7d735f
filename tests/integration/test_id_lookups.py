"""`klein status` and the operator's commands find a job by its own id or by its work's id:
the right rows (a retried work's newest job first), each by an index lookup, never a read of
every job (a scan took 250 ms at 600k jobs, and `klein submit --wait` asks twice a second)."""

import uuid

import psycopg
import pytest

from orchestrator.console_ops import id_range
from orchestrator.db import queries
from orchestrator.settings import KLEIN_TEMPLATE_ID


def work_with_jobs(url: str, jobs: int) -> tuple[str, list[str]]:
    """A failed-then-retried work with `jobs` jobs, oldest first: (work_id, job ids)."""
    work_id = str(uuid.uuid4())
    job_ids = [str(uuid.uuid4()) for _ in range(jobs)]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO works (id, user_id, template_id, input_data, status)"
            " VALUES (%s, %s, %s, '{\"prompt\": \"p\"}', 'pending')",
            (work_id, str(uuid.uuid4()), KLEIN_TEMPLATE_ID),
        )
        for age, job_id in enumerate(reversed(job_ids)):
            conn.execute(
                "INSERT INTO generation_jobs (id, work_id, status, created_at)"
                " VALUES (%s, %s, 'failed', now() - make_interval(mins => %s))",
                (job_id, work_id, age),
            )
    return work_id, job_ids


def run(url: str, name: str, ident: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(queries()[name], {"id": ident}).fetchall()


def test_job_status_by_either_id(migrated_url):
    work_id, (_, second, newest) = work_with_jobs(migrated_url, 3)
    work_with_jobs(migrated_url, 2)  # another work's jobs are never among the answers
    assert [row[0] for row in run(migrated_url, "job_status", work_id)] == [uuid.UUID(newest)]
    assert [row[0] for row in run(migrated_url, "job_status", second)] == [uuid.UUID(second)]
    assert run(migrated_url, "job_status", str(uuid.uuid4())) == []


def test_jobs_by_id_by_either_id(migrated_url):
    work_id, (first, second, newest) = work_with_jobs(migrated_url, 3)
    work_with_jobs(migrated_url, 2)
    by_work = run(migrated_url, "jobs_by_id", work_id)
    assert by_work == [(newest, work_id, False), (second, work_id, False), (first, work_id, False)]
    assert run(migrated_url, "jobs_by_id", first) == [(first, work_id, True)]
    assert run(migrated_url, "jobs_by_id", str(uuid.uuid4())) == []


def unbounded_reads(plan: dict) -> list[str]:
    """The nodes of an EXPLAIN (FORMAT JSON) plan that read a table without a condition on an
    index: a sequential scan, or an index walked from end to end."""
    here = []
    if "Relation Name" in plan and not ("Index Cond" in plan or "Recheck Cond" in plan):
        here = [f"{plan['Node Type']} on {plan['Relation Name']}"]
    return here + [node for child in plan.get("Plans", []) for node in unbounded_reads(child)]


@pytest.mark.parametrize("name", ["job_status", "jobs_by_id"])
def test_a_lookup_by_id_reads_indexes_only(migrated_url, name):
    work_id, _ = work_with_jobs(migrated_url, 2)
    with psycopg.connect(migrated_url) as conn:
        # A handful of rows would be scanned whatever the query: make a scan the last resort,
        # so that a plan still holding one has no other way (an OR across the join's tables).
        conn.execute("SET enable_seqscan = off")
        (plan,) = conn.execute(
            f"EXPLAIN (FORMAT JSON) {queries()[name]}", {"id": work_id}
        ).fetchone()
    assert unbounded_reads(plan[0]["Plan"]) == []


def by_prefix(url: str, prefix: str) -> list[tuple]:
    found = id_range(prefix)
    assert found is not None
    with psycopg.connect(url) as conn:
        return conn.execute(
            queries()["jobs_by_id_prefix"], {"low": found[0], "high": found[1]}
        ).fetchall()


def test_jobs_by_id_prefix_by_either_id(migrated_url):
    work_id, (first, second, newest) = work_with_jobs(migrated_url, 3)
    other_work, _ = work_with_jobs(migrated_url, 2)
    by_work = by_prefix(migrated_url, work_id[:9])  # the first group and its dash
    assert [row for row in by_work if row[1] == work_id] == [
        (newest, work_id, False),
        (second, work_id, False),
        (first, work_id, False),
    ]
    assert (first, work_id, True) in by_prefix(migrated_url, first[:13])
    assert {row[1] for row in by_prefix(migrated_url, "")} == {work_id, other_work}
    assert id_range("0123456789") is None  # a digit where the dash goes: no id starts so


def test_an_id_range_holds_exactly_the_ids_that_start_with_the_prefix():
    ids = sorted(str(uuid.uuid4()) for _ in range(2000))
    for prefix in ["", "7", "a3", "0f1e2d3c-", "0f1e2d3c-4b", ids[5][:20], ids[9]]:
        low, high = id_range(prefix)
        assert [i for i in ids if low <= i <= high] == [i for i in ids if i.startswith(prefix)]


def test_a_lookup_by_id_prefix_reads_indexes_only(migrated_url):
    work_id, _ = work_with_jobs(migrated_url, 2)
    low, high = id_range(work_id[:4])
    with psycopg.connect(migrated_url) as conn:
        conn.execute("SET enable_seqscan = off")  # as in test_a_lookup_by_id_reads_indexes_only
        (plan,) = conn.execute(
            f"EXPLAIN (FORMAT JSON) {queries()['jobs_by_id_prefix']}", {"low": low, "high": high}
        ).fetchone()
    assert unbounded_reads(plan[0]["Plan"]) == []
