"""The dashboard under load, served in-process over a real database: however many pages are
open, it reads the database once per interval over a connection of its own, so intake and
/readyz keep their pool; its answer comes within its deadline even from a database that stopped
answering; and a backlog of any size costs a bounded read (figures past a cap say "more")."""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from itertools import pairwise
from typing import Any

import httpx
import psycopg
import pytest

from orchestrator.dashboard import shared, snapshot
from orchestrator.dashboard.routes import close_dashboard
from orchestrator.db import Database
from orchestrator.http import DB_DEADLINE_S, create_app
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from tests.integration.dashkit import Seeded, add_job
from tests.integration.freezekit import freezable
from tests.integration.lockkit import lock_waiters
from tests.integration.test_http import RecordingWaker, insert_job, supabase_body

VIEWERS = 16
MARGIN_S = 1.0
WAIT_S = 10.0


@asynccontextmanager
async def dashboard_app(db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """The whole app over `db`, seen from this machine; the dashboard closed afterwards."""
    app = create_app(Settings(database_url="unused"), db, RecordingWaker(), Metrics())
    transport = httpx.ASGITransport(app, client=("127.0.0.1", 50000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client
    finally:
        await close_dashboard(app)


@asynccontextmanager
async def opened(url: str, max_size: int = 2) -> AsyncIterator[Database]:
    db = Database(url, max_size=max_size)
    await db.open()
    try:
        yield db
    finally:
        await db.close()


@contextmanager
def files_locked(url: str) -> Iterator[None]:
    """The files table locked against readers until the block ends: the dashboard's latest jobs
    (which show each one's image) wait on it; intake and /readyz never read it."""
    with psycopg.connect(url) as holder:
        holder.execute("LOCK TABLE files IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            holder.rollback()


async def a_lock_waiter(url: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while await asyncio.to_thread(lock_waiters, url) == 0:
        assert time.monotonic() < deadline, "no dashboard read came to wait on the lock"
        await asyncio.sleep(0.02)


def dashboard_backends(url: str) -> int:
    """Sessions of the dashboard's own connection (its application_name) on this database."""
    with psycopg.connect(url, autocommit=True) as conn:
        [(count,)] = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            (shared.APPLICATION_NAME,),
        ).fetchall()
    return int(count)


@pytest.fixture
def reads(monkeypatch) -> list[float]:
    """When each snapshot read began (its queue query), as the database was asked."""
    began: list[float] = []
    fetch_all = snapshot.fetch_all

    async def counted(conn: Any, name: str, **params: Any) -> list[dict[str, Any]]:
        if name == "dashboard_queue":
            began.append(time.monotonic())
        return await fetch_all(conn, name, **params)

    monkeypatch.setattr(snapshot, "fetch_all", counted)
    return began


def test_many_viewers_at_once_cost_one_read_and_share_its_answer(migrated_url, reads):
    async def run() -> tuple[list[httpx.Response], int, list[httpx.Response]]:
        async with opened(migrated_url) as db, dashboard_app(db) as client:
            with files_locked(migrated_url):  # the read is slow: every viewer comes during it
                asking = [
                    asyncio.create_task(client.get("/dashboard.json")) for _ in range(VIEWERS + 4)
                ]
                await a_lock_waiter(migrated_url)
                await asyncio.sleep(0.3)
                waiting = await asyncio.to_thread(lock_waiters, migrated_url)
            answers = await asyncio.gather(*asking)
            again = [await client.get("/dashboard.json") for _ in range(3)]  # still fresh
            return answers, waiting, again

    answers, waiting, again = asyncio.run(run())

    assert [answer.status_code for answer in answers + again] == [200] * (VIEWERS + 7)
    assert waiting == 1  # one session waits on the lock, not one per viewer
    assert len(reads) == 1
    assert len({answer.json()["generated_at"] for answer in answers + again}) == 1


def test_a_stale_snapshot_is_read_again_at_most_once_per_interval(migrated_url, reads):
    async def run() -> tuple[list[int], float]:
        async with opened(migrated_url) as db, dashboard_app(db) as client:
            begun, codes = time.monotonic(), []
            for _ in range(12):  # a viewer polling every 0.2 s
                codes.append((await client.get("/dashboard.json")).status_code)
                await asyncio.sleep(0.2)
            return codes, time.monotonic() - begun

    codes, took = asyncio.run(run())

    assert codes == [200] * 12
    assert 2 <= len(reads) <= took // shared.FRESH_S + 1
    gaps = [later - earlier for earlier, later in pairwise(reads)]
    assert all(gap >= shared.FRESH_S for gap in gaps), gaps


def test_intake_and_readyz_answer_while_viewers_wait_on_a_slow_database(migrated_url):
    job_id = insert_job(migrated_url)

    async def run() -> tuple[int, int, float, int]:
        async with opened(migrated_url, max_size=2) as db, dashboard_app(db) as client:
            with files_locked(migrated_url):
                viewers = [
                    asyncio.create_task(client.get("/dashboard.json")) for _ in range(VIEWERS)
                ]
                await a_lock_waiter(migrated_url)
                begun = time.monotonic()
                intake = await client.post("/webhook/klein_i2i", json=supabase_body(job_id))
                ready = await client.get("/readyz")
                took = time.monotonic() - begun
                in_flight = sum(not viewer.done() for viewer in viewers)
            await asyncio.gather(*viewers)
            return intake.status_code, ready.status_code, took, in_flight

    intake, ready, took, in_flight = asyncio.run(run())

    assert (intake, ready) == (200, 200)
    assert took < DB_DEADLINE_S
    assert in_flight == VIEWERS  # every viewer was still waiting meanwhile


def test_the_deadline_holds_when_the_database_stops_answering(migrated_url):
    async def run() -> tuple[int, list[int], float, int]:
        with freezable(migrated_url) as proxy:
            async with opened(proxy.url) as db, dashboard_app(db) as client:
                before = (await client.get("/dashboard.json")).status_code
                await asyncio.sleep(shared.FRESH_S)  # stale: the next request reads
                proxy.freeze()
                begun = time.monotonic()
                frozen = await asyncio.gather(
                    *(client.get("/dashboard.json") for _ in range(VIEWERS))
                )
                took = time.monotonic() - begun
                # The read is dropped by now, and its failure no longer the latest answer.
                await asyncio.sleep(shared.CANCEL_GRACE_S + shared.FRESH_S + 0.2)
                proxy.thaw()
                after = (await client.get("/dashboard.json")).status_code
                return before, [answer.status_code for answer in frozen], took, after

    before, frozen, took, after = asyncio.run(run())

    assert before == 200
    assert frozen == [503] * VIEWERS
    assert took < snapshot.READ_DEADLINE_S + MARGIN_S
    assert after == 200  # a fresh connection: the dropped one was not kept


def test_the_dashboard_reads_over_one_connection_of_its_own_closed_at_shutdown(migrated_url):
    async def run() -> tuple[int, int, int]:
        async with opened(migrated_url, max_size=2) as db:
            app = create_app(Settings(database_url="unused"), db, RecordingWaker(), Metrics())
            transport = httpx.ASGITransport(app, client=("127.0.0.1", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
                for _ in range(3):
                    assert (await c.get("/dashboard.json")).status_code == 200
                    await asyncio.sleep(shared.FRESH_S)
                asked_of_pool = db.pool.get_stats().get("requests_num", 0)
                while_open = await asyncio.to_thread(dashboard_backends, migrated_url)
                await close_dashboard(app)
                closing = await asyncio.to_thread(settled, migrated_url)
                return asked_of_pool, while_open, closing

    asked_of_pool, while_open, after_close = asyncio.run(run())

    assert while_open == 1
    assert after_close == 0
    assert asked_of_pool == 0  # intake's and the flow's pool was never asked for a connection


def settled(url: str) -> int:
    """Dashboard sessions left once the server has seen closed ones go (a few ms)."""
    deadline = time.monotonic() + WAIT_S
    while (count := dashboard_backends(url)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return count


def test_pending_figures_past_the_cap_say_more_than_it(migrated_url, monkeypatch):
    monkeypatch.setattr(snapshot, "QUEUE_COUNT_CAP", 3)
    seeded = Seeded()
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        for n in range(5):
            add_job(conn, seeded, f"old-{n}", prompt="x", job={}, work={}, age_s=3600 + n)
        delayed = {"retries": 1, "not_before": "2999-01-01T00:00:00Z"}
        add_job(conn, seeded, "fresh", prompt="x", job=delayed, work={}, age_s=5)
        held = {"status": "taken", "locked_by": "w-other", "taken_at": "now"}
        add_job(conn, seeded, "taken", prompt="x", job=held, work={"status": "taken"}, age_s=30)

    async def run() -> dict[str, Any]:
        async with opened(migrated_url) as db, dashboard_app(db) as client:
            answer = await client.get("/dashboard.json")
            assert answer.status_code == 200
            return answer.json()["queue"]

    queue = asyncio.run(run())

    assert queue["pending"] == {"count": 3, "oldest_s": queue["pending"]["oldest_s"], "delayed": 1}
    assert 3604 <= queue["pending"]["oldest_s"] < 3700  # the oldest is exact, whatever the cap
    assert queue["taken"]["count"] == 1
    assert queue["by_age"] == {
        "under_1m": 2,  # the fresh pending one and the taken one: exact
        "from_1m_to_5m": 0,
        "from_5m_to_15m": 0,
        "over_15m": 3,  # 5 old ones: "3+"
    }
    assert queue["count_cap"] == 3
    assert queue["over_cap"] == ["pending.count", "by_age.over_15m"]


def test_a_snapshot_is_fresh_for_an_interval_after_its_read_ended():
    assert shared.is_fresh(10.0, 10.9, 1.0)
    assert not shared.is_fresh(10.0, 11.0, 1.0)


def test_the_queue_shape_caps_only_the_pending_figures():
    rows = [
        {"stage": "pending", "jobs": 11, "oldest_s": 7200.0, "delayed": 11}
        | {"under_1m": 4, "from_1m_to_5m": 0, "from_5m_to_15m": 0, "over_15m": 11},
        {"stage": "taken", "jobs": 12, "oldest_s": 60.0, "delayed": 0}
        | {"under_1m": 12, "from_1m_to_5m": 0, "from_5m_to_15m": 0, "over_15m": 0},
    ]

    queue = snapshot.shape_queue(rows, cap=10)

    assert queue["pending"] == {"count": 10, "oldest_s": 7200.0, "delayed": 10}
    assert queue["taken"]["count"] == 12  # in flight: counted whole, never capped
    assert queue["by_age"]["under_1m"] == 16
    assert queue["by_age"]["over_15m"] == 10
    assert queue["over_cap"] == ["pending.count", "pending.delayed", "by_age.over_15m"]
