"""How long each stage of a job took (`generation_jobs.timings`, in milliseconds): measured in
this process as the job goes, merged into the row with `||`, fenced by the lease like every write.

`claim` (how long the due job waited to be claimed) is computed by the database from its own
timestamps, so clocks of different machines never meet in one subtraction.
"""

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from psycopg import AsyncConnection

from orchestrator.db import fetch_one
from orchestrator.deps import FlowDeps
from orchestrator.errors import FencedOut
from orchestrator.settings import MAX_SECONDS

STAGES = ("claim", "translate", "submit", "runpod_queue", "gpu", "store", "title", "finalize")


def elapsed_ms(started_s: float, ended_s: float) -> int:
    """Whole milliseconds between two clock readings in seconds, never negative."""
    return max(0, round((ended_s - started_s) * 1000))


# The longest stage RunPod may report, in ms (a job's whole life is bounded by JOB_TIMEOUT_S,
# itself at most MAX_SECONDS): a larger figure is no measurement and is left out.
MAX_REPORTED_MS = MAX_SECONDS * 1000


def runpod_ms(delay_time: object, execution_time: object) -> dict[str, int]:
    """RunPod's `delayTime` (queue) and `executionTime` (GPU run), in ms, where it reported them
    as a duration (an executionTime of 1e30 used to be written as the job's GPU time)."""
    reported = {"runpod_queue": delay_time, "gpu": execution_time}
    return {
        stage: round(value)
        for stage, value in reported.items()
        if isinstance(value, int | float)
        and not isinstance(value, bool)
        and 0 <= value <= MAX_REPORTED_MS
    }


class StageClock:
    """One job's stage durations in this process, waiting to be written."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ms: dict[str, int] = {}

    def now(self) -> float:
        """A reading to pass to `since`."""
        return self._clock()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage `name` (also when it raises: the time was spent)."""
        started = self._clock()
        try:
            yield
        finally:
            self.since(name, started)

    def since(self, name: str, started: float) -> None:
        """Stage `name` ran from the reading `started` until now."""
        self._ms[name] = elapsed_ms(started, self._clock())

    def add(self, ms: Mapping[str, int]) -> None:
        """Durations measured elsewhere (RunPod's)."""
        self._ms.update(ms)

    def take(self) -> dict[str, int]:
        """The durations not yet written; the clock forgets them."""
        taken, self._ms = self._ms, {}
        return taken


async def record_timings(
    conn: AsyncConnection[Any], *, job_id: str, worker_id: str, timings: Mapping[str, int]
) -> bool:
    """Merge timings into the job's row (the claim wrote its own); False when it is no longer
    ours."""
    row = await fetch_one(
        conn, "record_timings", job_id=job_id, worker_id=worker_id, timings=dict(timings)
    )
    return row is not None


async def save_timings(deps: FlowDeps, job_id: str, clock: StageClock) -> None:
    """Write what the clock measured since its last write (one statement, no BEGIN or COMMIT);
    FencedOut if the job is not ours."""
    async with deps.db.connection() as conn:
        held = await record_timings(
            conn, job_id=job_id, worker_id=deps.settings.worker_id, timings=clock.take()
        )
    if not held:
        raise FencedOut(job_id)
