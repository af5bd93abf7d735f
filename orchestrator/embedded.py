"""The embedded defaults: what `klein` runs itself when a service is not configured.

With no `DATABASE_URL`, a PostgreSQL shipped in a wheel (`pgserver`) runs in a local data folder;
with no RunPod endpoint, the local RunPod-compatible endpoint runs this project's handler against
`COMFY_API_URL`. Both are for trying Klein on one machine; production sets the real services.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from orchestrator import plugins
from orchestrator.errors import ConfigError
from orchestrator.migrate import apply_migrations, migrations_dir
from orchestrator.settings import DEFAULT_RUNPOD_API_BASE, Settings

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "klein"
LOCAL_ENDPOINT_ID = "local"
NO_LOCAL_ENDPOINT = (
    "no RUNPOD_ENDPOINT_ID is set and the local RunPod endpoint is a development tool that is not "
    f"installed: {plugins.INSTALL}, or set RUNPOD_ENDPOINT_ID"
)


async def migrate(url: str) -> list[str]:
    """Apply every migration not yet recorded; returns the versions applied."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await apply_migrations(conn, migrations_dir())


@contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """DATABASE_URL; without it, the embedded PostgreSQL (started or joined, and migrated)."""
    if settings.database_url:
        yield settings.database_url
        return
    log.info("no DATABASE_URL: using the embedded PostgreSQL in %s", settings.local_database_dir)
    with embedded_postgres(settings.local_database_dir) as url:
        asyncio.run(migrate(url))
        yield url


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or join) the PostgreSQL kept in `data_dir`; yields the URL of database `klein`.

    The server stops when the last `klein` process using it exits.
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver  # noqa: PLC0415 - only when no DATABASE_URL is set

        try:
            server = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
        except (subprocess.SubprocessError, OSError) as exc:
            raise ConfigError(
                f"the embedded PostgreSQL did not start in {data_dir} ({type(exc).__name__}); "
                f"its log is {data_dir / 'log'}; or set DATABASE_URL to a PostgreSQL server"
            ) from exc
    with server:
        _create_database(server.get_uri(), EMBEDDED_DATABASE)
        yield str(server.get_uri(EMBEDDED_DATABASE))


def _create_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def wants_local_endpoint(settings: Settings) -> bool:
    """True when no RunPod endpoint is configured at all (neither an id nor another API base)."""
    return not settings.runpod_endpoint_id and settings.runpod_api_base == DEFAULT_RUNPOD_API_BASE


def with_runpod_defaults(settings: Settings) -> Settings:
    """An API base other than RunPod's needs no endpoint id: `klein endpoint` answers to `local`."""
    if settings.runpod_endpoint_id:
        return settings
    return settings.model_copy(update={"runpod_endpoint_id": LOCAL_ENDPOINT_ID})


@contextmanager
def local_endpoint(settings: Settings) -> Iterator[Settings]:
    """Run the dev tools' local RunPod endpoint (the real handler, a free port) for as long as
    the block lasts; yields `settings` pointed at it."""
    start = plugins.load("local_endpoint", NO_LOCAL_ENDPOINT)
    with start(
        endpoint_id=LOCAL_ENDPOINT_ID,
        workers=settings.local_endpoint_workers,
        execution_timeout_s=settings.job_timeout_s,
    ) as api_base:
        yield settings.model_copy(
            update={"runpod_endpoint_id": LOCAL_ENDPOINT_ID, "runpod_api_base": api_base}
        )
