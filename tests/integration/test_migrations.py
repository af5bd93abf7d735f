"""The schema migrations and their runner, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from orchestrator.migrate import (
    MigrationError,
    apply_migrations,
    discover,
    migrations_dir,
)
from tests.pg import fresh_database

KLEIN_TEMPLATE_ID = "82064257-1bef-45d8-a6ba-715f33c887cc"
TABLES = ("templates", "files", "works", "generation_jobs")

Migrate = Callable[..., list[str]]

# The seed's DDL from README_WORKFLOW.md ("Database Integration"), in foreign-key order and with
# its typo fixed (works ends in `};` there). Note `timestamp`, not timestamptz, and no defaults
# on the ids: this is what production has.
SEED_DDL = """
CREATE TABLE templates (
  id UUID PRIMARY KEY,
  template_name TEXT,
  is_active BOOLEAN DEFAULT false
);
CREATE TABLE files (
  id UUID PRIMARY KEY,
  user_id UUID NOT NULL,
  bucket_id TEXT,
  path TEXT,
  width INTEGER,
  height INTEGER,
  file_url TEXT,
  created_at TIMESTAMP DEFAULT now()
);
CREATE TABLE works (
  id UUID PRIMARY KEY,
  user_id UUID NOT NULL,
  template_id UUID NOT NULL REFERENCES templates(id),
  input_data JSONB,
  status TEXT DEFAULT 'pending',
  runpod_job_id TEXT,
  generation_metadata JSONB,
  output_file_id UUID REFERENCES files(id),
  thumbnail_file_id UUID REFERENCES files(id),
  title TEXT,
  output_data_json JSONB,
  tags TEXT[],
  error_message TEXT,
  created_at TIMESTAMP DEFAULT now(),
  completed_at TIMESTAMP,
  failed_at TIMESTAMP,
  cancelled_at TIMESTAMP
);
CREATE TABLE generation_jobs (
  id UUID PRIMARY KEY,
  work_id UUID NOT NULL REFERENCES works(id),
  status TEXT DEFAULT 'pending',
  taken_at TIMESTAMP,
  priority INTEGER DEFAULT 0,
  created_at TIMESTAMP DEFAULT now()
);
"""

# One row in each seed table, as the n8n era left them.
SEED_ROWS = """
INSERT INTO templates VALUES ('11111111-1111-1111-1111-111111111111', 'OTHER', true);
INSERT INTO files (id, user_id, bucket_id, path, width, height, file_url, created_at) VALUES
  ('22222222-2222-2222-2222-222222222222', '33333333-3333-3333-3333-333333333333', 'works',
   'u/w/output.png', 832, 1216, 'https://example.test/u/w/output.png', '2025-02-11 10:30:45');
INSERT INTO works (id, user_id, template_id, input_data, status, runpod_job_id, output_file_id,
                   title, tags, created_at, completed_at) VALUES
  ('44444444-4444-4444-4444-444444444444', '33333333-3333-3333-3333-333333333333',
   '11111111-1111-1111-1111-111111111111', '{"prompt": "바다"}', 'completed', 'rp-1',
   '22222222-2222-2222-2222-222222222222', '해변 풍경', ARRAY['I2I'],
   '2025-02-11 10:30:00', '2025-02-11 10:30:45');
INSERT INTO generation_jobs (id, work_id, status, taken_at, priority, created_at) VALUES
  ('55555555-5555-5555-5555-555555555555', '44444444-4444-4444-4444-444444444444', 'completed',
   '2025-02-11 10:30:01', 1, '2025-02-11 10:30:00');
"""

# What the catalogs say about everything the migrations own; equal snapshots, equal schemas.
SNAPSHOT_QUERIES = {
    "columns": """
        SELECT table_schema, table_name, column_name, data_type, column_default, is_nullable
        FROM information_schema.columns
        WHERE table_schema IN ('public', 'auth', 'supabase_migrations') ORDER BY 1, 2, 3""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "indexes": """
        SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname IN ('public', 'supabase_migrations') ORDER BY 1, 2, 3""",
    "policies": """
        SELECT tablename, policyname, permissive, roles::text, cmd, qual, with_check
        FROM pg_policies ORDER BY 1, 2""",
    "functions": """
        SELECT n.nspname, p.proname, pg_get_functiondef(p.oid)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname IN ('public', 'auth') ORDER BY 1, 2""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger
        WHERE NOT tgisinternal ORDER BY 1, 2""",
    "rls": """
        SELECT relname, relrowsecurity FROM pg_class
        WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' ORDER BY 1""",
    "grants": """
        SELECT table_name, grantee, privilege_type FROM information_schema.role_table_grants
        WHERE table_schema = 'public' ORDER BY 1, 2, 3""",
    "templates": "SELECT id, template_name, is_active FROM public.templates ORDER BY id",
}


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """The schema (and template rows) as the catalogs describe them."""
    with psycopg.connect(url) as conn:
        return {key: conn.execute(query).fetchall() for key, query in SNAPSHOT_QUERIES.items()}


def columns(url: str) -> dict[str, set[str]]:
    """Column names per table of the four tables."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = ANY(%s)",
            (list(TABLES),),
        ).fetchall()
    found: dict[str, set[str]] = {table: set() for table in TABLES}
    for table, column in rows:
        found[table].add(column)
    return found


def history(url: str) -> list[tuple[str, str]]:
    """(version, name) of the recorded migrations."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT version, name FROM supabase_migrations.schema_migrations ORDER BY version"
        ).fetchall()


def execute(url: str, script: str) -> None:
    """Run a script as the database owner."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(script)


def all_rows(conn: psycopg.Connection[Any], table: str) -> list[tuple[Any, ...]]:
    """Every row of table, by id."""
    query = sql.SQL("SELECT * FROM {} ORDER BY id").format(sql.Identifier(table))
    return conn.execute(query).fetchall()


def repo_versions() -> list[str]:
    """The versions of the repository's migration files."""
    return [migration.version for migration in discover(migrations_dir())]


# ---------------------------------------------------------------------------------------------
# Applying, reapplying, upgrading the seed's tables
# ---------------------------------------------------------------------------------------------


def test_migrations_dir_holds_the_repositorys_migrations() -> None:
    directory = migrations_dir()
    assert directory == Path(__file__).resolve().parents[2] / "supabase" / "migrations"
    assert repo_versions(), "no migration files found"


def test_empty_database_gets_all_tables_columns_and_a_recorded_history(
    pg_url: str, run_migrations: Migrate
) -> None:
    applied = run_migrations(pg_url)

    assert applied == repo_versions()
    assert [version for version, _ in history(pg_url)] == applied
    found = columns(pg_url)
    assert {"attempts", "locked_by", "lease_expires_at", "not_before", "last_error"} <= found[
        "generation_jobs"
    ]
    assert {"finished_at", "submitted_at", "runpod_job_id", "webhook_token", "updated_at"} <= found[
        "generation_jobs"
    ]
    assert {"runpod_job_id", "generation_metadata", "error_message", "failed_at"} <= found["works"]
    assert {"cancelled_at", "updated_at", "output_data_json", "tags"} <= found["works"]


def test_history_names_are_the_filenames_without_version_and_extension(
    migrated_url: str,
) -> None:
    expected = [
        (m.version, m.path.name.removesuffix(".sql").split("_", 1)[1])
        for m in discover(migrations_dir())
    ]
    assert history(migrated_url) == expected
    assert all(name.startswith("klein_i2i") for _, name in expected)


def test_second_run_applies_nothing_and_changes_nothing(
    migrated_url: str, run_migrations: Migrate
) -> None:
    before = snapshot(migrated_url)

    assert run_migrations(migrated_url) == []
    assert snapshot(migrated_url) == before


def test_sql_itself_is_idempotent_when_rerun_without_history(
    migrated_url: str, run_migrations: Migrate
) -> None:
    # Production may see these files again without our history (e.g. a database restored from a
    # dump that skipped supabase_migrations): the SQL alone must be safe to run twice.
    before = snapshot(migrated_url)
    execute(migrated_url, "TRUNCATE supabase_migrations.schema_migrations")

    assert run_migrations(migrated_url) == repo_versions()
    assert snapshot(migrated_url) == before


def test_seed_tables_are_upgraded_in_place_keeping_their_rows(
    pg_url: str, pg_server: str, run_migrations: Migrate
) -> None:
    execute(pg_url, SEED_DDL + SEED_ROWS)
    with psycopg.connect(pg_url) as conn:
        seed_rows = {table: all_rows(conn, table) for table in TABLES}

    assert run_migrations(pg_url) == repo_versions()

    with psycopg.connect(pg_url) as conn:
        for table, rows in seed_rows.items():
            width = len(rows[0])
            kept = all_rows(conn, table)
            # The seed's columns come first and keep their values; new ones follow.
            assert [row[:width] for row in kept if row[0] in {r[0] for r in rows}] == rows
        job = conn.execute(
            "SELECT attempts, locked_by, lease_expires_at FROM generation_jobs"
        ).fetchone()
        assert job == (0, None, None)
        created_type = conn.execute(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'works' AND column_name = 'created_at'"
        ).fetchone()
        assert created_type == ("timestamp without time zone",), "existing column type changed"
    with fresh_database(pg_server) as fresh_url:
        run_migrations(fresh_url)
        assert columns(pg_url) == columns(fresh_url)


def test_seed_ids_get_a_default_so_inserts_need_no_id(pg_url: str, run_migrations: Migrate) -> None:
    execute(pg_url, SEED_DDL + SEED_ROWS)
    run_migrations(pg_url)

    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "INSERT INTO files (user_id) VALUES (%s) RETURNING id", (str(uuid.uuid4()),)
        ).fetchone()
    assert row is not None
    assert row[0] is not None


def test_older_tables_lacking_seed_columns_get_them(
    pg_url: str, pg_server: str, run_migrations: Migrate
) -> None:
    execute(
        pg_url,
        """
        CREATE TABLE templates (id uuid PRIMARY KEY, template_name text);
        CREATE TABLE files (id uuid PRIMARY KEY, user_id uuid NOT NULL);
        CREATE TABLE works (id uuid PRIMARY KEY, user_id uuid NOT NULL, input_data jsonb,
                            status text);
        CREATE TABLE generation_jobs (id uuid PRIMARY KEY, work_id uuid NOT NULL, status text);
        INSERT INTO works VALUES (gen_random_uuid(), gen_random_uuid(), '{}', 'completed');
        """,
    )

    run_migrations(pg_url)

    with fresh_database(pg_server) as fresh_url:
        run_migrations(fresh_url)
        assert columns(pg_url) == columns(fresh_url)


def test_klein_template_is_inserted_active(migrated_url: str) -> None:
    with psycopg.connect(migrated_url) as conn:
        row = conn.execute(
            "SELECT template_name, is_active FROM templates WHERE id = %s", (KLEIN_TEMPLATE_ID,)
        ).fetchone()
    assert row == ("XiCON_KLEIN_I2I", True)


def test_existing_inactive_klein_template_is_left_as_it_is(
    pg_url: str, run_migrations: Migrate
) -> None:
    execute(pg_url, SEED_DDL)
    with psycopg.connect(pg_url) as conn:
        conn.execute(
            "INSERT INTO templates VALUES (%s, 'paused by ops', false)", (KLEIN_TEMPLATE_ID,)
        )

    run_migrations(pg_url)

    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT template_name, is_active FROM templates WHERE id = %s", (KLEIN_TEMPLATE_ID,)
        ).fetchone()
    assert row == ("paused by ops", False)


def test_template_insert_tolerates_extra_required_columns_when_the_row_exists(
    pg_url: str, run_migrations: Migrate
) -> None:
    # Production's templates table may have NOT NULL columns the seed does not list.
    execute(pg_url, SEED_DDL + "ALTER TABLE templates ADD COLUMN category text NOT NULL;")
    with psycopg.connect(pg_url) as conn:
        conn.execute(
            "INSERT INTO templates VALUES (%s, 'XiCON_KLEIN_I2I', true, 'i2i')",
            (KLEIN_TEMPLATE_ID,),
        )

    assert run_migrations(pg_url) == repo_versions()


# ---------------------------------------------------------------------------------------------
# The job-created notification
# ---------------------------------------------------------------------------------------------


def test_inserting_a_job_notifies_its_id(migrated_url: str) -> None:
    with psycopg.connect(migrated_url, autocommit=True) as listener:
        listener.execute("LISTEN generation_job_created")
        with psycopg.connect(migrated_url) as writer:
            work_id = insert_work(writer, uuid.uuid4(), "pending")
            job_id = insert_job(writer, work_id)

        # The timeout is a deadline for a lost notification, not a speed check.
        received = list(listener.notifies(timeout=10, stop_after=1))

    assert [(n.channel, json.loads(n.payload)) for n in received] == [
        ("generation_job_created", {"id": str(job_id)})
    ]


# ---------------------------------------------------------------------------------------------
# Row level security
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Owned:
    """One user's work, its output file and its job."""

    user_id: uuid.UUID
    work_id: uuid.UUID
    file_id: uuid.UUID
    job_id: uuid.UUID


def insert_work(conn: psycopg.Connection[Any], user_id: uuid.UUID, status: str) -> uuid.UUID:
    """A Klein work for user_id, as the table owner."""
    row = conn.execute(
        "INSERT INTO works (user_id, template_id, input_data, status) "
        "VALUES (%s, %s, '{}', %s) RETURNING id",
        (user_id, KLEIN_TEMPLATE_ID, status),
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def insert_job(conn: psycopg.Connection[Any], work_id: uuid.UUID) -> uuid.UUID:
    """A pending job for work_id, as the table owner."""
    row = conn.execute(
        "INSERT INTO generation_jobs (work_id) VALUES (%s) RETURNING id", (work_id,)
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def insert_owned(conn: psycopg.Connection[Any], status: str) -> Owned:
    """A new user with a work in status, a file and a job."""
    user_id = uuid.uuid4()
    work_id = insert_work(conn, user_id, status)
    row = conn.execute(
        "INSERT INTO files (user_id, bucket_id, path) VALUES (%s, 'works', 'x') RETURNING id",
        (user_id,),
    ).fetchone()
    assert row is not None
    return Owned(user_id, work_id, uuid.UUID(str(row[0])), insert_job(conn, work_id))


@pytest.fixture
def alice_and_bob(migrated_url: str) -> tuple[Owned, Owned]:
    """Two users, each with an unfinished (processing) work, a file and a job."""
    with psycopg.connect(migrated_url) as conn:
        return insert_owned(conn, "processing"), insert_owned(conn, "processing")


@contextmanager
def acting_as(
    url: str, role: str, sub: uuid.UUID | None = None
) -> Iterator[psycopg.Connection[Any]]:
    """A transaction as PostgREST runs one: SET ROLE and the JWT claims; rolled back after."""
    claims: dict[str, str] = {"role": role} | ({"sub": str(sub)} if sub else {})
    with psycopg.connect(url) as conn:
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        try:
            yield conn
        finally:
            conn.rollback()


def ids(conn: psycopg.Connection[Any], table: str) -> set[uuid.UUID]:
    """The ids of table that the current role can see."""
    query = sql.SQL("SELECT id FROM {}").format(sql.Identifier(table))
    return {uuid.UUID(str(row[0])) for row in conn.execute(query).fetchall()}


def set_status(conn: psycopg.Connection[Any], work_id: uuid.UUID, status: str) -> int:
    """Update a work's status as the current role; the number of rows changed."""
    cur = conn.execute("UPDATE works SET status = %s WHERE id = %s", (status, work_id))
    return cur.rowcount


def work_status(url: str, work_id: uuid.UUID) -> str:
    """A work's status, read as the owner."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT status FROM works WHERE id = %s", (work_id,)).fetchone()
    assert row is not None
    return str(row[0])


def test_user_sees_only_own_works_files_and_jobs(
    migrated_url: str, alice_and_bob: tuple[Owned, Owned]
) -> None:
    alice, _ = alice_and_bob
    with acting_as(migrated_url, "authenticated", alice.user_id) as conn:
        assert ids(conn, "works") == {alice.work_id}
        assert ids(conn, "files") == {alice.file_id}
        assert ids(conn, "generation_jobs") == {alice.job_id}


def test_user_cannot_update_another_users_work(
    migrated_url: str, alice_and_bob: tuple[Owned, Owned]
) -> None:
    alice, bob = alice_and_bob
    with acting_as(migrated_url, "authenticated", alice.user_id) as conn:
        assert set_status(conn, bob.work_id, "cancelled") == 0
        conn.commit()
    assert work_status(migrated_url, bob.work_id) == "processing"


def test_user_can_cancel_own_work(migrated_url: str, alice_and_bob: tuple[Owned, Owned]) -> None:
    alice, _ = alice_and_bob
    with acting_as(migrated_url, "authenticated", alice.user_id) as conn:
        assert set_status(conn, alice.work_id, "cancelled") == 1
        conn.commit()
    assert work_status(migrated_url, alice.work_id) == "cancelled"


def test_user_cannot_set_own_work_to_completed(
    migrated_url: str, alice_and_bob: tuple[Owned, Owned]
) -> None:
    alice, _ = alice_and_bob
    with (
        acting_as(migrated_url, "authenticated", alice.user_id) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"),
    ):
        set_status(conn, alice.work_id, "completed")
    assert work_status(migrated_url, alice.work_id) == "processing"


def test_user_cannot_cancel_a_finished_work(migrated_url: str) -> None:
    with psycopg.connect(migrated_url) as conn:
        done = insert_owned(conn, "completed")
    with acting_as(migrated_url, "authenticated", done.user_id) as conn:
        assert set_status(conn, done.work_id, "cancelled") == 0
        conn.commit()
    assert work_status(migrated_url, done.work_id) == "completed"


def test_user_cannot_update_jobs(migrated_url: str, alice_and_bob: tuple[Owned, Owned]) -> None:
    alice, _ = alice_and_bob
    with acting_as(migrated_url, "authenticated", alice.user_id) as conn:
        cur = conn.execute(
            "UPDATE generation_jobs SET priority = 1000 WHERE id = %s", (alice.job_id,)
        )
        assert cur.rowcount == 0


def test_jobs_stay_private_when_works_are_shared(
    migrated_url: str, alice_and_bob: tuple[Owned, Owned]
) -> None:
    # A gallery may later let users see each other's works; their jobs must stay their own.
    alice, bob = alice_and_bob
    execute(migrated_url, 'CREATE POLICY "Gallery" ON works FOR SELECT USING (true)')
    with acting_as(migrated_url, "authenticated", alice.user_id) as conn:
        assert ids(conn, "works") >= {alice.work_id, bob.work_id}
        assert ids(conn, "generation_jobs") == {alice.job_id}


@pytest.mark.usefixtures("alice_and_bob")
def test_anonymous_sees_no_works(migrated_url: str) -> None:
    with acting_as(migrated_url, "anon") as conn:
        assert ids(conn, "works") == set()
        assert ids(conn, "generation_jobs") == set()


def test_service_role_sees_and_updates_all(
    migrated_url: str, alice_and_bob: tuple[Owned, Owned]
) -> None:
    alice, bob = alice_and_bob
    with acting_as(migrated_url, "service_role") as conn:
        assert ids(conn, "works") >= {alice.work_id, bob.work_id}
        assert ids(conn, "files") >= {alice.file_id, bob.file_id}
        assert ids(conn, "generation_jobs") >= {alice.job_id, bob.job_id}
        for owned in alice_and_bob:
            assert set_status(conn, owned.work_id, "completed") == 1
        conn.commit()
    assert {work_status(migrated_url, o.work_id) for o in alice_and_bob} == {"completed"}


def test_anyone_sees_active_templates_only(migrated_url: str) -> None:
    hidden = uuid.uuid4()
    with psycopg.connect(migrated_url) as conn:
        conn.execute("INSERT INTO templates VALUES (%s, 'OLD', false)", (hidden,))
    for role in ("anon", "authenticated"):
        with acting_as(migrated_url, role, uuid.uuid4()) as conn:
            assert ids(conn, "templates") == {uuid.UUID(KLEIN_TEMPLATE_ID)}


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------


def write(directory: Path, files: dict[str, str]) -> Path:
    """A migrations directory holding files."""
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def table_exists(url: str, name: str) -> bool:
    """Whether public.name exists."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{name}",)).fetchone()
    return bool(row and row[0])


def test_failing_file_raises_with_its_name_and_leaves_nothing_of_it(
    pg_url: str, tmp_path: Path, run_migrations: Migrate
) -> None:
    directory = write(
        tmp_path / "m",
        {
            "20260101000000_first.sql": "CREATE TABLE a (id int);",
            "20260102000000_second.sql": "CREATE TABLE b (id int);\nSELECT 1 / 0;",
        },
    )

    with pytest.raises(MigrationError, match=r"^20260102000000_second\.sql: division by zero"):
        run_migrations(pg_url, directory)

    assert history(pg_url) == [("20260101000000", "first")]
    assert table_exists(pg_url, "a")
    assert not table_exists(pg_url, "b")

    (directory / "20260102000000_second.sql").write_text("CREATE TABLE b (id int);")
    assert run_migrations(pg_url, directory) == ["20260102000000"]
    assert table_exists(pg_url, "b")


def test_versions_recorded_by_the_supabase_cli_are_not_applied_again(
    pg_url: str, tmp_path: Path, run_migrations: Migrate
) -> None:
    execute(
        pg_url,
        """
        CREATE SCHEMA supabase_migrations;
        CREATE TABLE supabase_migrations.schema_migrations (
            version text PRIMARY KEY, statements text[], name text);
        INSERT INTO supabase_migrations.schema_migrations VALUES ('20260101000000', '{}', 'old');
        """,
    )
    directory = write(
        tmp_path / "m",
        {
            "20260101000000_old.sql": "SELECT 1 / 0;",  # would fail if run
            "20260102000000_new.sql": "CREATE TABLE b (id int);",
        },
    )

    assert run_migrations(pg_url, directory) == ["20260102000000"]


def test_misnamed_file_is_refused(pg_url: str, tmp_path: Path, run_migrations: Migrate) -> None:
    directory = write(tmp_path / "m", {"add_things.sql": "CREATE TABLE a (id int);"})

    with pytest.raises(MigrationError, match=r"^add_things\.sql: "):
        run_migrations(pg_url, directory)
    assert not table_exists(pg_url, "a")


def test_repeated_version_is_refused(tmp_path: Path) -> None:
    directory = write(
        tmp_path / "m", {"20260101000000_a.sql": "SELECT 1;", "20260101000000_b.sql": "SELECT 1;"}
    )

    with pytest.raises(MigrationError, match="already used"):
        discover(directory)


def test_connection_inside_a_transaction_is_refused(pg_url: str) -> None:
    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(pg_url) as conn:
            await conn.execute("SELECT 1")  # opens a transaction (not autocommit)
            await apply_migrations(conn, migrations_dir())

    with pytest.raises(MigrationError, match="inside a transaction"):
        asyncio.run(run())


def test_concurrent_runners_apply_each_migration_once(pg_url: str) -> None:
    async def one_runner() -> list[str]:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            return await apply_migrations(conn, migrations_dir())

    async def race() -> list[list[str]]:
        return list(await asyncio.gather(*(one_runner() for _ in range(4))))

    results = asyncio.run(race())

    applied = [version for result in results for version in result]
    assert sorted(applied) == repo_versions()
    assert [version for version, _ in history(pg_url)] == repo_versions()
