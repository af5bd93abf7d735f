"""PostgreSQL access: the named queries of sql/queries.sql over an async psycopg pool."""

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import asynccontextmanager
from functools import cache
from importlib import resources
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

Row = dict[str, Any]
NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
PING_DEADLINE_S = 2.0
T = TypeVar("T")
_abandoned: set[asyncio.Future[Any]] = set()


@cache
def queries() -> dict[str, str]:
    """Every named query, by name."""
    text = resources.files("orchestrator").joinpath("sql/queries.sql").read_text("utf-8")
    parts = NAME.split(text)[1:]
    return {name: body.strip() for name, body in zip(parts[::2], parts[1::2], strict=True)}


async def bounded(deadline_s: float, work: Awaitable[T]) -> T:
    """`work`'s result, or TimeoutError at deadline_s even when the server does not answer.

    asyncio.timeout alone does not hold that deadline: psycopg answers the cancellation of a
    query in flight by asking the server to cancel it and waiting for it to, up to 10 s more.
    Here the cancelled work finishes that in the background, and its connection goes back to
    the pool (or is closed) then."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=deadline_s)
    finally:
        if not task.done():
            task.cancel()
            _abandoned.add(task)
            task.add_done_callback(_forget)
    if task not in done:
        raise TimeoutError(f"the database did not answer within {deadline_s:g} s")
    return task.result()


def _forget(task: asyncio.Future[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned query's failure is no news


class DatabaseUnreachable(Exception):
    """No connection to the database: one sentence naming its host (never the password), and why."""


def with_connect_timeout(url: str, timeout_s: int) -> str:
    """`url` with libpq's connect_timeout (a server that accepts but never answers would hang a
    connect for ever), unless the URL sets its own."""
    if "connect_timeout" in conninfo_to_dict(url):
        return url
    if url.startswith(("postgresql://", "postgres://")):
        return f"{url}{'&' if '?' in url else '?'}connect_timeout={timeout_s}"
    return f"{url} connect_timeout={timeout_s}"  # the key=value form


def unreachable(url: str, exc: psycopg.Error) -> DatabaseUnreachable:
    """A failed connection to `url`, as one sentence: where, and why (libpq's first line)."""
    if isinstance(exc, psycopg.errors.ConnectionTimeout):
        timeout = conninfo_to_dict(url).get("connect_timeout", "?")
        reason = f"no answer within {timeout} s (connect_timeout)"
    else:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = first_line.rsplit("failed: ", 1)[-1]  # libpq repeats the host before it
    return DatabaseUnreachable(f"cannot connect to the database at {where(url)}: {reason}")


def where(url: str) -> str:
    """The host and port of a database URL, for messages: never its user or password."""
    params = conninfo_to_dict(url)
    host = str(params.get("host") or "the local socket")
    return f"{host}:{params['port']}" if params.get("port") else host


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """A connection to `url`, or DatabaseUnreachable saying where and why not."""
    try:
        return psycopg.connect(url, autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise unreachable(url, exc) from exc


async def connect_async(url: str, *, autocommit: bool = False) -> AsyncConnection[Any]:
    """An async connection to `url`, or DatabaseUnreachable saying where and why not."""
    try:
        return await AsyncConnection.connect(url, autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise unreachable(url, exc) from exc


def _params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: Jsonb(value) if isinstance(value, dict) else value for key, value in params.items()
    }


async def fetch_all(conn: AsyncConnection[Any], name: str, **params: Any) -> list[Row]:
    """Run a named query and return its rows as dicts."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(queries()[name], _params(params))
        return await cursor.fetchall() if cursor.description else []


async def fetch_one(conn: AsyncConnection[Any], name: str, **params: Any) -> Row | None:
    """Run a named query and return its first row, or None."""
    rows = await fetch_all(conn, name, **params)
    return rows[0] if rows else None


class Database:
    """The pool, and a transaction helper; everything else is a named query.

    Connections are in autocommit: a named query is one statement (a CTE at most), which
    PostgreSQL runs as a transaction of its own, so `one` and `all` send no BEGIN and COMMIT
    (0.15 against 0.37 ms a call on 127.0.0.1); `transaction` groups several statements."""

    def __init__(self, url: str, max_size: int = 10, open_timeout_s: float = 10.0) -> None:
        self.url = url
        self.open_timeout_s = open_timeout_s
        self._ping: asyncio.Future[bool] | None = None
        self.pool = AsyncConnectionPool(
            url, min_size=1, max_size=max_size, open=False, kwargs={"autocommit": True}
        )

    async def open(self) -> None:
        """Connect; DatabaseUnreachable, saying why, if the database cannot be reached."""
        try:
            await self.pool.open(wait=True, timeout=self.open_timeout_s)
        except PoolTimeout:
            await self.pool.close()
            await self._why_not()

    async def _why_not(self) -> None:
        """The pool's timeout does not say why its connections failed: one more attempt does."""
        try:
            probe = await asyncio.wait_for(connect_async(self.url), self.open_timeout_s)
        except TimeoutError:
            probe = None
        if probe is not None:
            await probe.close()
        raise DatabaseUnreachable(
            f"cannot connect to the database at {where(self.url)}: "
            f"no connection within {self.open_timeout_s:g} s"
        )

    async def close(self) -> None:
        """Close every connection."""
        await self.pool.close()

    @asynccontextmanager
    async def connection(
        self, timeout_s: float | None = None
    ) -> AsyncIterator[AsyncConnection[Any]]:
        """A connection of the pool (autocommit: each statement commits on its own); waits at
        most timeout_s for one."""
        async with self.pool.connection(timeout=timeout_s) as conn:
            yield conn

    @asynccontextmanager
    async def transaction(
        self, timeout_s: float | None = None
    ) -> AsyncIterator[AsyncConnection[Any]]:
        """A connection inside one transaction, committed on success; waits at most timeout_s."""
        async with self.connection(timeout_s) as conn, conn.transaction():
            yield conn

    async def all(self, name: str, /, **params: Any) -> list[Row]:
        """A named query, a transaction of its own."""
        async with self.connection() as conn:
            return await fetch_all(conn, name, **params)

    async def one(self, name: str, /, timeout_s: float | None = None, **params: Any) -> Row | None:
        """A named query, a transaction of its own; its first row."""
        async with self.connection(timeout_s) as conn:
            return await fetch_one(conn, name, **params)

    async def ping(self) -> bool:
        """True when the database answers within PING_DEADLINE_S. Callers at the same time
        share one probe, so a flood of readiness checks takes one connection at most."""
        if self._ping is None or self._ping.done():
            self._ping = asyncio.ensure_future(self._probe())
        return await asyncio.shield(self._ping)

    async def _probe(self) -> bool:
        try:
            await bounded(PING_DEADLINE_S, self._select_one())
        except Exception:  # readiness reports any failure as not ready
            return False
        return True

    async def _select_one(self) -> None:
        async with self.pool.connection(timeout=PING_DEADLINE_S) as conn:
            await conn.execute("SELECT 1")
