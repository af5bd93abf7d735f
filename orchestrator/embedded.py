"""The embedded defaults: what `klein` runs itself when a service is not configured.

With no `DATABASE_URL`, a PostgreSQL shipped in a wheel (`pgserver`) runs in a local data folder;
with no RunPod endpoint, the local RunPod-compatible endpoint runs this project's handler against
`COMFY_API_URL`. Both are for trying Klein on one machine; production sets the real services.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType

import psycopg
from psycopg import sql

from orchestrator import plugins
from orchestrator.db import connect, connect_async, with_connect_timeout
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
    async with await connect_async(url, autocommit=True) as conn:
        return await apply_migrations(conn, migrations_dir())


@contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """DATABASE_URL; without it, the embedded PostgreSQL (started or joined, and migrated).
    Either with DATABASE_CONNECT_TIMEOUT_S as its connect_timeout, unless it has its own."""
    timeout_s = settings.database_connect_timeout_s
    if settings.database_url:
        yield with_connect_timeout(settings.database_url, timeout_s)
        return
    log.info("no DATABASE_URL: using the embedded PostgreSQL in %s", settings.local_database_dir)
    with embedded_postgres(settings.local_database_dir) as server_url:
        url = with_connect_timeout(server_url, timeout_s)
        asyncio.run(migrate(url))
        yield url


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or join) the PostgreSQL kept in `data_dir`; yields the URL of database `klein`.

    The server stops when the last `klein` process using it exits: pgserver counts the processes
    in the folder (under a file lock, so processes starting together start one server), and the
    last to leave the block, or to exit, stops it.
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), _signals_held():
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
    """Create database `name` unless it exists; two processes may both find it missing."""
    with connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return
        # Another process may have created it since: pg_database's unique index says so.
        with suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


HELD_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGTERM, SIGHUP and SIGINT until the block ends, then deliver the first that came.

    pgserver starts the server and then records this process as one of its users: a signal in
    between would leave a server that no process stops. Held in Python, not in the signal mask,
    which the server's processes would inherit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {signum: signal.signal(signum, _recorder(arrived)) for signum in HELD_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if arrived:
            signal.raise_signal(arrived[0])


def _recorder(arrived: list[int]) -> Callable[[int, FrameType | None], None]:
    def record(signum: int, frame: FrameType | None) -> None:
        arrived.append(signum)

    return record


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
