"""Faults for the orchestrator's outside systems, injected where they are given to it: a
Database whose named queries can raise (or stall), proxies over its clients whose methods can
raise, and an httpx transport that loses `/run`'s answer. Nothing of ours is patched."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
import psycopg

from orchestrator.db import Database, queries
from orchestrator.service import Orchestrator
from tests.integration.flowkit import execute, flow_deps

EXCEPTIONS: dict[str, Callable[[], BaseException]] = {
    "RuntimeError": lambda: RuntimeError("injected: a bug nobody planned for"),
    "OSError": lambda: OSError(28, "injected: no space left on device"),
    "OperationalError": lambda: psycopg.OperationalError("injected: server closed the connection"),
}


class Fault:
    """Raise a fresh exception the first `times` times the step is reached; count every visit."""

    def __init__(self, make: Callable[[], BaseException] | None = None, times: int = 1) -> None:
        self.make = make
        self.left = times
        self.visits = 0

    def trip(self) -> None:
        self.visits += 1
        if self.make is not None and self.left > 0:
            self.left -= 1
            raise self.make()


class FaultyDatabase(Database):
    """The real pool, with faults on named queries (`before`), stalls after them (`after`), and
    answers lost after they committed (`lost`)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.before: dict[str, Fault] = {}
        self.after: dict[str, float] = {}
        self.lost: dict[str, Fault] = {}
        self._names = {text: name for name, text in queries().items()}

    @asynccontextmanager
    async def connection(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
        async with super().connection(timeout_s) as conn:
            yield _Connection(conn, self)


class _Connection:
    def __init__(self, conn: Any, db: FaultyDatabase) -> None:
        self._conn, self._db = conn, db

    def cursor(self, *args: Any, **kwargs: Any) -> "_Cursor":
        return _Cursor(self._conn.cursor(*args, **kwargs), self._db)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class _Cursor:
    def __init__(self, cursor: Any, db: FaultyDatabase) -> None:
        self._cursor, self._db = cursor, db

    async def __aenter__(self) -> "_Cursor":
        await self._cursor.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._cursor.__aexit__(*exc)

    async def execute(self, statement: str, params: Any = None) -> Any:
        name = self._db._names.get(statement)
        fault = self._db.before.get(name or "")
        if fault is not None:
            fault.trip()
        result = await self._cursor.execute(statement, params)
        if name in self._db.after:
            await asyncio.sleep(self._db.after[name])
        if (lost := self._db.lost.get(name or "")) is not None:
            lost.trip()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class FaultyProxy:
    """Stands in for a client (RunPod, OpenRouter, storage): `faults[method]` trips first."""

    def __init__(self, target: Any, faults: dict[str, Fault]) -> None:
        self._target, self._faults = target, faults

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        fault = self._faults.get(name)
        if fault is None:
            return attribute

        async def faulty(*args: Any, **kwargs: Any) -> Any:
            fault.trip()
            return await attribute(*args, **kwargs)

        return faulty


class LosesRunAnswers(httpx.AsyncBaseTransport):
    """Forwards every request; `/run`'s answer is lost the first `times` times (a read
    timeout after RunPod accepted the job)."""

    def __init__(self, times: int = 1) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.left = times

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if request.url.path.endswith("/run") and self.left > 0:
            self.left -= 1
            await response.aread()
            raise httpx.ReadTimeout("injected: the answer was lost", request=request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


@asynccontextmanager
async def running(
    url, endpoint, openrouter_server, tmp_path, *, db=None, wrap=None, **settings
) -> AsyncIterator[Orchestrator]:
    """A running Orchestrator (its four loops) on real clients; `wrap(deps)` may replace them."""
    fast = {
        "lease_s": 3.0,
        "heartbeat_interval_s": 0.3,
        "sweep_interval_s": 0.2,
        "retry_base_s": 0.2,
        "retry_cap_s": 1.0,
    }
    async with flow_deps(url, endpoint, openrouter_server, tmp_path, **(fast | settings)) as base:
        deps = base
        if db is not None:
            await db.open()
            deps = replace(deps, db=db)
        if wrap is not None:
            deps = wrap(deps)
        orchestrator = Orchestrator(deps, url)
        loops = asyncio.create_task(orchestrator.run())
        try:
            yield orchestrator
        finally:
            orchestrator.stop()
            await asyncio.wait_for(loops, 20)
            if db is not None:
                await db.close()


async def until_finished(url: str, job_id: str, timeout_s: float) -> tuple[dict[str, Any], float]:
    """The job's row once it is completed, failed or cancelled, and how long that took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        row = await asyncio.to_thread(job_state, url, job_id)
        if row["status"] in ("completed", "failed", "cancelled"):
            return row, time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} not finished after {timeout_s} s: {job_state(url, job_id)}")


def job_state(url: str, job_id: str) -> dict[str, Any]:
    """The job row with its work's status and message, and its webhook `token`."""
    with psycopg.connect(url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT j.*, w.status AS work_status, w.error_message, w.title, "
            "t.webhook_token AS token FROM generation_jobs j JOIN works w ON w.id = j.work_id "
            "LEFT JOIN generation_job_tokens t ON t.job_id = j.id WHERE j.id = %s",
            (job_id,),
        )
        row = cur.fetchone()
        assert row is not None
        return row


def set_token(url: str, job_id: str) -> str:
    """Give a job a webhook token, as begin_submission does."""
    token = uuid.uuid4().hex
    execute(
        url,
        "INSERT INTO generation_job_tokens (job_id, webhook_token) VALUES (%s, %s)",
        (job_id, token),
    )
    return token


async def webhook(orchestrator: Orchestrator, token: str, runpod_id: str) -> bool:
    """RunPod's completion webhook as the HTTP app hands it over; False for an unknown token."""
    row = await orchestrator.deps.db.one("job_by_webhook_token", token=token)
    if row is not None:
        await orchestrator.runpod_callback(token, row, runpod_id)
    return row is not None
