"""Apply `supabase/migrations/*.sql` once each, recorded where the Supabase CLI records them.

Sharing the CLI's history table means a database migrated by `supabase db push` is seen as
migrated here, and the other way round. Each file runs in its own transaction under an advisory
lock, so replicas starting together apply every file exactly once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row

# Arbitrary, fixed: every process migrating this database must take the same lock.
MIGRATION_LOCK_KEY: Final = 0x6B6C65696E5F6D67  # "klein_mg"

_FILENAME: Final = re.compile(r"^(?P<version>[0-9]+)_(?P<name>.+)\.sql$")

# The CLI's table; the columns are added one by one as the CLI does, for an older table.
ENSURE_HISTORY_TABLE: Final = """
CREATE SCHEMA IF NOT EXISTS supabase_migrations;
CREATE TABLE IF NOT EXISTS supabase_migrations.schema_migrations (version text PRIMARY KEY);
ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS statements text[];
ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS name text;
"""

LOCK: Final = "SELECT pg_advisory_xact_lock(%s)"

IS_RECORDED: Final = """
SELECT EXISTS (SELECT 1 FROM supabase_migrations.schema_migrations WHERE version = %s)
"""

RECORD: Final = """
INSERT INTO supabase_migrations.schema_migrations (version, statements, name)
VALUES (%s, %s, %s)
"""


class MigrationError(Exception):
    """A migration could not be applied; the message names the file and the reason."""


@dataclass(frozen=True)
class Migration:
    """One SQL file: `{version}_{name}.sql`."""

    version: str
    name: str
    path: Path


def migrations_dir() -> Path:
    """The migrations shipped as package data (`orchestrator/migrations`, a link to
    `supabase/migrations` in the source tree, so this is that folder in an editable install)."""
    folder = resources.files("orchestrator") / "migrations"
    if not isinstance(folder, Path):
        raise MigrationError("the orchestrator package is not installed as plain files")
    return folder.resolve()


def parse_filename(filename: str) -> tuple[str, str]:
    """Split `20260211000000_klein_i2i.sql` into its version and name, as the Supabase CLI does."""
    match = _FILENAME.match(filename)
    if match is None:
        raise MigrationError(f"{filename}: not named <timestamp>_<name>.sql")
    return match["version"], match["name"]


def discover(directory: Path) -> list[Migration]:
    """The directory's migrations in name order; misnamed files and repeated versions are errors."""
    migrations: list[Migration] = []
    seen: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql"), key=lambda p: p.name):
        version, name = parse_filename(path.name)
        if version in seen:
            raise MigrationError(f"{path.name}: version {version} already used by {seen[version]}")
        seen[version] = path.name
        migrations.append(Migration(version, name, path))
    return migrations


async def apply_migrations(conn: psycopg.AsyncConnection[Any], directory: Path) -> list[str]:
    """Apply the directory's migrations not yet recorded; return the versions applied now."""
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise MigrationError("the connection must not be inside a transaction")
    migrations = discover(directory)
    if not migrations:
        raise MigrationError(f"no migration files in {directory}; the installation is incomplete")
    applied: list[str] = []
    for migration in migrations:
        if await _apply_one(conn, migration):
            applied.append(migration.version)
    return applied


async def _apply_one(conn: psycopg.AsyncConnection[Any], migration: Migration) -> bool:
    """Apply one file and record it, in one transaction; False when it was recorded already."""
    script = migration.path.read_text(encoding="utf-8")
    async with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        # Taken before anything is read, so a replica that waited here sees the other's record.
        await cur.execute(LOCK, (MIGRATION_LOCK_KEY,))
        await cur.execute(ENSURE_HISTORY_TABLE)
        await cur.execute(IS_RECORDED, (migration.version,))
        row = await cur.fetchone()
        if row is not None and row[0]:
            return False
        try:
            # No parameters: psycopg sends the file as it is, several statements at once.
            await cur.execute(script)
        except psycopg.Error as exc:
            raise MigrationError(f"{migration.path.name}: {exc}") from exc
        # The CLI stores the statements one by one; the whole file as one is equivalent to run.
        await cur.execute(RECORD, (migration.version, [script], migration.name))
    return True
