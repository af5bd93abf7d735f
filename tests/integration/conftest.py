"""Fixtures for tests against a real PostgreSQL: a fresh database per test."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

# `tests` is not a package pytest puts on sys.path by itself (no __init__.py, no `pythonpath`
# setting); the repository root makes `tests.pg` importable. Drop this once pyproject sets
# `pythonpath = ["."]`.
_REPO_ROOT = str(Path(__file__).resolve().parents[2])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from orchestrator.migrate import apply_migrations, migrations_dir  # noqa: E402
from tests.integration.flowkit import endpoint_for  # noqa: E402, F401
from tests.pg import ServerUnavailableError, fresh_database, server_url  # noqa: E402


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The test server's URL; fails (not skips) with how to start it when none answers."""
    try:
        return server_url()
    except ServerUnavailableError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)  # outside the except: no chained traceback


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty database, dropped (WITH (FORCE)) after the test."""
    with fresh_database(pg_server) as url:
        yield url


def _migrate(url: str, directory: Path | None = None) -> list[str]:
    """Apply migrations to the database at url; return the versions applied."""

    async def run() -> list[str]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await apply_migrations(conn, directory or migrations_dir())

    return asyncio.run(run())


@pytest.fixture
def run_migrations() -> Callable[..., list[str]]:
    """`run_migrations(url, directory=None)`: apply migrations from a synchronous test."""
    return _migrate


@pytest.fixture
def migrated_url(pg_url: str) -> str:
    """A fresh database with the repository's migrations applied."""
    _migrate(pg_url)
    return pg_url
