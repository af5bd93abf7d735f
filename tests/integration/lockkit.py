"""Which row a statement locks first, observed from outside: while another transaction holds a
job's row, the statement under test waits on it; whether it already holds the job's work row then
shows in a NOWAIT probe. Every statement that writes both rows must take the job's first, or two
of them can wait on each other (a deadlock PostgreSQL breaks only by aborting one)."""

import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

WAIT_DEADLINE_S = 10


@contextmanager
def job_row_locked(url: str, job_id: str) -> Iterator[None]:
    """The job's row locked by a transaction of its own until the block ends (rolled back)."""
    with psycopg.connect(url) as holder:
        holder.execute("SELECT 1 FROM generation_jobs WHERE id = %s FOR UPDATE", (job_id,))
        try:
            yield
        finally:
            holder.rollback()


def lock_waiters(url: str) -> int:
    """How many sessions of this database are waiting for a lock now."""
    with psycopg.connect(url, autocommit=True) as conn:
        [(count,)] = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchall()
    return int(count)


def await_a_lock_waiter(url: str) -> None:
    """Return once some session waits for a lock; AssertionError past WAIT_DEADLINE_S."""
    deadline = time.monotonic() + WAIT_DEADLINE_S
    while lock_waiters(url) == 0:
        assert time.monotonic() < deadline, "nothing came to wait on the job's row"
        time.sleep(0.02)


def work_row_free(url: str, work_id: str) -> bool:
    """Whether the work's row can be locked at once (nobody holds it)."""
    with psycopg.connect(url) as conn:
        try:
            conn.execute("SELECT 1 FROM works WHERE id = %s FOR UPDATE NOWAIT", (work_id,))
        except psycopg.errors.LockNotAvailable:
            return False
        finally:
            conn.rollback()
    return True
