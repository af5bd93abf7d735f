"""One dashboard snapshot for every viewer, read over a connection of the dashboard's own.

However many pages are open, the database sees one dashboard read at a time, and none for FRESH_S
after one ends: a request within that interval gets the last answer, and requests that come
while a read is under way wait for that read. The read has one connection, opened when first
needed from the service's database URL: never one of the pool's, which intake and the job flow
need. Every answer comes within READ_DEADLINE_S of its read's start, even from a server that
stopped answering."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo

from orchestrator.dashboard.snapshot import READ_DEADLINE_S
from orchestrator.db import connect_async

log = logging.getLogger(__name__)

Snapshot = dict[str, Any]
Read = Callable[[AsyncConnection[Any]], Awaitable[Snapshot]]

# The page polls every 2 s (static/app.js): with half that, one read serves every open page and
# each still sees a change by its next poll.
FRESH_S = 1.0
# After the deadline psycopg asks the server to cancel the read and waits for it to (up to 10 s
# when the server is not answering); past this grace the read is dropped with its connection.
CANCEL_GRACE_S = 0.5
APPLICATION_NAME = "klein dashboard"  # how its connection shows in pg_stat_activity


class DashboardUnavailable(Exception):
    """No snapshot to show now; the message says why, in one sentence."""


@dataclass(frozen=True)
class Flight:
    """One read of the snapshot, and when it began (the monotonic clock)."""

    task: asyncio.Task[Snapshot]
    began: float


def is_fresh(read_ended: float, now: float, fresh_s: float) -> bool:
    """Whether a read that ended at `read_ended` may still answer a request at `now`. Counted
    from its end, not its start: a database slow to answer gets a pause between reads."""
    return now - read_ended < fresh_s


def no_answer(deadline_s: float) -> str:
    """Why a read that ran out of time has no snapshot."""
    return f"the database did not answer within {deadline_s:g} s"


def answer_of(task: asyncio.Task[Snapshot], deadline_s: float) -> Snapshot:
    """A finished read's snapshot, or DashboardUnavailable saying why there is none."""
    if task.cancelled():
        raise DashboardUnavailable(no_answer(deadline_s))
    failure = task.exception()
    if failure is not None:
        raise DashboardUnavailable(f"the read failed ({type(failure).__name__})") from failure
    return task.result()


class SharedSnapshot:
    """The dashboard's reads: one at a time, shared while fresh, bounded end to end."""

    def __init__(
        self,
        url: str,
        read: Read,
        *,
        fresh_s: float = FRESH_S,
        deadline_s: float = READ_DEADLINE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = make_conninfo(url, application_name=APPLICATION_NAME)
        self._read = read
        self._fresh_s = fresh_s
        self._deadline_s = deadline_s
        self._clock = clock
        self._conn: AsyncConnection[Any] | None = None
        self._flight: Flight | None = None  # the read under way
        self._last: tuple[float, asyncio.Task[Snapshot]] | None = None  # the latest that ended
        self._closed = False

    async def get(self) -> Snapshot:
        """The snapshot: the last one while fresh, else the read under way (one is started when
        none is); DashboardUnavailable when there is none within the deadline."""
        if self._closed:
            raise DashboardUnavailable("the service is stopping")
        now = self._clock()
        if self._last is not None and is_fresh(self._last[0], now, self._fresh_s):
            return answer_of(self._last[1], self._deadline_s)
        flight = self._flight or self._take_off(now)
        left_s = flight.began + self._deadline_s - now
        if left_s > 0:
            await asyncio.wait({flight.task}, timeout=left_s)  # leaves the read running
        if not flight.task.done():  # past its deadline: being dropped
            raise DashboardUnavailable(no_answer(self._deadline_s))
        return answer_of(flight.task, self._deadline_s)

    def _take_off(self, now: float) -> Flight:
        task = asyncio.create_task(self._read_once(), name="dashboard snapshot")
        loop = asyncio.get_running_loop()
        timers = [
            loop.call_later(self._deadline_s, task.cancel),  # psycopg cancels it politely
            loop.call_later(self._deadline_s + CANCEL_GRACE_S, task.cancel),  # and now bluntly
        ]
        flight = self._flight = Flight(task, now)

        def landed(_: object) -> None:
            for timer in timers:
                timer.cancel()
            self._flight, self._last = None, (self._clock(), task)
            if task.cancelled():
                log.warning("dashboard: %s", no_answer(self._deadline_s))
            elif (failure := task.exception()) is not None:
                log.warning("dashboard: the database did not answer (%s)", type(failure).__name__)

        task.add_done_callback(landed)
        return flight

    async def _read_once(self) -> Snapshot:
        try:
            if self._conn is None:
                self._conn = await connect_async(self._url, autocommit=True)
            return await self._read(self._conn)
        except BaseException:  # cancelled at the deadline too: its state is unknown
            await self._drop_connection()
            raise

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()  # closes the socket; sends nothing, so it cannot hang

    async def close(self) -> None:
        """Drop a read under way and close the connection (the service is stopping)."""
        self._closed = True
        if self._flight is not None:
            task = self._flight.task
            for _ in range(2):  # politely, then bluntly (see CANCEL_GRACE_S)
                task.cancel()
                await asyncio.wait({task}, timeout=CANCEL_GRACE_S)
                if task.done():
                    break
        await self._drop_connection()
