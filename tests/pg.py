"""A throwaway database per test on the PostgreSQL server named by KLEIN_TEST_PG."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

ENV_VAR = "KLEIN_TEST_PG"
DEFAULT_URLS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)
START_HINT = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
CONNECT_TIMEOUT_S = 5


class ServerUnavailableError(RuntimeError):
    """No test PostgreSQL server answered; the message says how to start one."""


def server_url() -> str:
    """The first reachable server: $KLEIN_TEST_PG, else the local defaults."""
    configured = os.environ.get(ENV_VAR)
    candidates = (configured,) if configured else DEFAULT_URLS
    failures: list[str] = []
    for url in candidates:
        try:
            with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S):
                return url
        except psycopg.OperationalError as exc:
            failures.append(f"  {url}: {str(exc).strip()}")
    raise ServerUnavailableError(
        "No PostgreSQL server for the integration tests:\n"
        + "\n".join(failures)
        + f"\nStart the local one with:\n  {START_HINT}\n"
        + f"or point {ENV_VAR} at a server where this user may create databases."
    )


def with_dbname(url: str, dbname: str) -> str:
    """The same server and user, another database (URL or key=value conninfo)."""
    if url.startswith(("postgres://", "postgresql://")):
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path=f"/{dbname}"))
    return make_conninfo(url, dbname=dbname)


def create_database(server: str) -> str:
    """Create an empty, uniquely named database and return its URL."""
    name = f"klein_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_dbname(server, name)


def drop_database(server: str, url: str) -> None:
    """Drop the database at url, disconnecting anything still using it."""
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name)))
        )


@contextmanager
def fresh_database(server: str) -> Iterator[str]:
    """An empty database for the block, dropped afterwards."""
    url = create_database(server)
    try:
        yield url
    finally:
        drop_database(server, url)
