"""The data's defences (20260212000000_klein_i2i_hardening.sql), acted out as PostgREST runs a
request: SET ROLE anon/authenticated and the JWT claims, with the auth.uid() shim."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from orchestrator.db import queries
from orchestrator.migrate import migrations_dir
from tests.integration.test_migrations import (
    SEED_DDL,
    SEED_ROWS,
    Migrate,
    Owned,
    acting_as,
    execute,
    insert_owned,
    work_status,
)

USER_ONLY = "users may change only status"


@pytest.fixture
def alice_and_bob(migrated_url: str) -> tuple[Owned, Owned]:
    """Two users, each with an unfinished (processing) work, a file and a job."""
    with psycopg.connect(migrated_url) as conn:
        return insert_owned(conn, "processing"), insert_owned(conn, "processing")


@contextmanager
def with_claims(url: str, role: str, claims: dict[str, str]) -> Iterator[psycopg.Connection[Any]]:
    """A transaction as `role` carrying whatever claims a caller chose; rolled back after."""
    with psycopg.connect(url) as conn:
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        try:
            yield conn
        finally:
            conn.rollback()


def work_row(url: str, work_id: uuid.UUID) -> tuple[Any, ...]:
    """Every column of a work, read as the owner."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT * FROM works WHERE id = %s", (work_id,)).fetchone()
    assert row is not None
    return tuple(row)


def other_template(url: str) -> uuid.UUID:
    """An active template that is not Klein's."""
    template_id = uuid.uuid4()
    execute(url, f"INSERT INTO templates VALUES ('{template_id}', 'OTHER', true)")
    return template_id


# --------------------------------------------------------------------------- a user's cancel


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("output_file_id", "bob's file"),
        ("thumbnail_file_id", "bob's file"),
        ("title", "hijacked"),
        ("output_data_json", '{"image_url": "https://evil.test/x.png"}'),
        ("input_data", '{"prompt": "something else"}'),
        ("template_id", "another template"),
        ("runpod_job_id", "rp-forged"),
        ("user_id", "bob"),
    ],
)
def test_a_users_cancel_cannot_rewrite_any_other_column(
    migrated_url: str, alice_and_bob: tuple[Owned, Owned], column: str, value: str
) -> None:
    alice, bob = alice_and_bob
    resolved = {
        "bob's file": str(bob.file_id),
        "another template": str(other_template(migrated_url)),
        "bob": str(bob.user_id),
    }.get(value, value)
    before = work_row(migrated_url, alice.work_id)
    query = sql.SQL("UPDATE works SET status = 'cancelled', {} = %s WHERE id = %s").format(
        sql.Identifier(column)
    )
    with (
        acting_as(migrated_url, "authenticated", alice.user_id) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match=USER_ONLY),
    ):
        conn.execute(query, (resolved, alice.work_id))
    assert work_row(migrated_url, alice.work_id) == before


def test_a_users_cancel_may_set_cancelled_at_and_updated_at(
    migrated_url: str, alice_and_bob: tuple[Owned, Owned]
) -> None:
    alice, _ = alice_and_bob
    with acting_as(migrated_url, "authenticated", alice.user_id) as conn:
        cur = conn.execute(
            "UPDATE works SET status = 'cancelled', cancelled_at = now(), updated_at = now() "
            "WHERE id = %s",
            (alice.work_id,),
        )
        assert cur.rowcount == 1
        conn.commit()
    assert work_status(migrated_url, alice.work_id) == "cancelled"


def test_the_orchestrator_still_writes_every_column(
    migrated_url: str, alice_and_bob: tuple[Owned, Owned]
) -> None:
    alice, _ = alice_and_bob
    for role in (None, "service_role"):
        with psycopg.connect(migrated_url) as conn:
            if role:
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            cur = conn.execute(
                "UPDATE works SET status = 'completed', title = '해변', output_file_id = %s "
                "WHERE id = %s",
                (alice.file_id, alice.work_id),
            )
            assert cur.rowcount == 1
            conn.rollback()


# --------------------------------------------------------------------------- service role policy


@pytest.mark.parametrize("role", ["authenticated", "anon"])
def test_a_forged_service_role_claim_grants_no_service_update(
    migrated_url: str, alice_and_bob: tuple[Owned, Owned], role: str
) -> None:
    # On plain PostgreSQL any session sets request.jwt.claims; the seed's policy believed the
    # claim, so a user could mark her own work completed (the cancel policy's check bypassed).
    alice, _ = alice_and_bob
    claims = {"role": "service_role", "sub": str(alice.user_id)}
    with (
        with_claims(migrated_url, role, claims) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"),
    ):
        conn.execute("UPDATE works SET status = 'completed' WHERE id = %s", (alice.work_id,))
    assert work_status(migrated_url, alice.work_id) == "processing"


def test_the_service_role_policy_names_the_database_role_and_has_a_check(
    migrated_url: str,
) -> None:
    with psycopg.connect(migrated_url) as conn:
        row = conn.execute(
            "SELECT roles::text, qual, with_check FROM pg_policies "
            "WHERE tablename = 'works' AND policyname = 'Service role updates work'"
        ).fetchone()
    assert row == ("{service_role}", "true", "true")


# --------------------------------------------------------------------------- CHECK constraints


@pytest.mark.parametrize(
    ("statement", "constraint"),
    [
        ("UPDATE generation_jobs SET status = 'bogus'", "generation_jobs_status_valid"),
        ("UPDATE generation_jobs SET status = 'processing'", "generation_jobs_status_valid"),
        ("UPDATE generation_jobs SET priority = -2147483648", "generation_jobs_priority_range"),
        ("UPDATE generation_jobs SET priority = 1001", "generation_jobs_priority_range"),
        ("UPDATE works SET status = 'bogus'", "works_status_valid"),
        ("UPDATE works SET status = 'COMPLETED'", "works_status_valid"),
    ],
)
def test_statuses_and_priority_outside_their_rules_are_refused(
    migrated_url: str, alice_and_bob: tuple[Owned, Owned], statement: str, constraint: str
) -> None:
    with (
        psycopg.connect(migrated_url) as conn,
        pytest.raises(psycopg.errors.CheckViolation, match=constraint),
    ):
        conn.execute(statement)


def test_a_bogus_job_cannot_be_inserted(
    migrated_url: str, alice_and_bob: tuple[Owned, Owned]
) -> None:
    alice, _ = alice_and_bob
    with psycopg.connect(migrated_url) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO generation_jobs (work_id, status) VALUES (%s, 'bogus')", (alice.work_id,)
        )


def test_every_status_of_the_state_diagram_and_the_priority_bounds_are_accepted(
    migrated_url: str, alice_and_bob: tuple[Owned, Owned]
) -> None:
    alice, _ = alice_and_bob
    with psycopg.connect(migrated_url) as conn:
        for status in ("pending", "taken", "processing", "completed", "failed", "cancelled"):
            conn.execute("UPDATE works SET status = %s WHERE id = %s", (status, alice.work_id))
        for status in ("pending", "taken", "completed", "failed", "cancelled"):
            conn.execute(
                "UPDATE generation_jobs SET status = %s WHERE id = %s", (status, alice.job_id)
            )
        for priority in (-1000, 0, 1000):
            conn.execute(
                "UPDATE generation_jobs SET priority = %s WHERE id = %s", (priority, alice.job_id)
            )
        conn.rollback()


def test_legacy_rows_that_break_a_rule_do_not_fail_the_migration(
    pg_url: str, run_migrations: Migrate
) -> None:
    execute(pg_url, SEED_DDL + SEED_ROWS)
    execute(pg_url, "UPDATE generation_jobs SET status = 'done', priority = 99999")

    run_migrations(pg_url)

    with psycopg.connect(pg_url) as conn:
        valid = dict(
            conn.execute(
                "SELECT conname, convalidated FROM pg_constraint WHERE conname = ANY(%s)",
                (
                    [
                        "generation_jobs_status_valid",
                        "generation_jobs_priority_range",
                        "works_status_valid",
                    ],
                ),
            ).fetchall()
        )
        assert valid == {
            "generation_jobs_status_valid": False,
            "generation_jobs_priority_range": False,
            "works_status_valid": True,
        }
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO generation_jobs (work_id, status) "
                "SELECT id, 'bogus' FROM works LIMIT 1"
            )


# ------------------------------------------------------------------------ webhook tokens


def test_a_user_cannot_read_the_webhook_token_of_their_own_submitted_job(
    migrated_url: str, alice_and_bob: tuple[Owned, Owned]
) -> None:
    """The token is all that authenticates RunPod's completion webhook, which carries the
    result: the owner of a job sees the job's row but no token, neither in it nor anywhere."""
    alice, _ = alice_and_bob
    token = "tok-" + uuid.uuid4().hex
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE generation_jobs SET status = 'taken', locked_by = 'w1' WHERE id = %s",
            (alice.job_id,),
        )
        [(given, _works)] = conn.execute(
            queries()["begin_submission"],
            {
                "job_id": alice.job_id,
                "worker_id": "w1",
                "work_id": alice.work_id,
                "webhook_token": token,
                "metadata": psycopg.types.json.Jsonb({}),
            },
        ).fetchall()
    assert given == token
    for role in ("authenticated", "anon"):
        with acting_as(migrated_url, role, alice.user_id) as conn:
            seen = conn.execute(
                "SELECT to_jsonb(j)::text FROM generation_jobs j WHERE id = %s", (alice.job_id,)
            ).fetchall()
            if role == "authenticated":
                assert len(seen) == 1  # her own job, as before
            assert token not in str(seen)
        with (
            acting_as(migrated_url, role, alice.user_id) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute("SELECT webhook_token FROM generation_job_tokens")


def test_a_token_a_user_could_read_before_the_migration_is_moved_out_of_sight(
    pg_url: str, run_migrations: Migrate, tmp_path: Path
) -> None:
    """A job in flight during the upgrade keeps its webhook (the token is moved, not lost), and
    the copy users could read is emptied."""
    for earlier in sorted(migrations_dir().glob("*.sql")):
        if earlier.name < "20260215000000":
            shutil.copy(earlier, tmp_path / earlier.name)
    run_migrations(pg_url, tmp_path)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        owned = insert_owned(conn, "processing")
        conn.execute(
            "UPDATE generation_jobs SET webhook_token = 'tok-old' WHERE id = %s", (owned.job_id,)
        )
    run_migrations(pg_url)
    with psycopg.connect(pg_url) as conn:
        [(column,)] = conn.execute(
            "SELECT webhook_token FROM generation_jobs WHERE id = %s", (owned.job_id,)
        ).fetchall()
        moved = conn.execute(queries()["job_by_webhook_token"], {"token": "tok-old"}).fetchall()
    assert column is None
    assert [str(row[0]) for row in moved] == [str(owned.job_id)]
