"""How many finished outputs this process holds at once (OUTPUT_SLOTS).

A `/status` answer for a COMPLETED job carries the whole image (megabytes of base64). Without a
bound, a burst of jobs finishing together each holds its answer while it waits for the CPU lane
to decode it: measured with 200 jobs and 1 MP outputs (`bench/full_path.py`), klein serve's peak
RSS was ~1.2 GB. So every `/status` call takes a slot first: an answer that is still running (or
ended without an output) gives it back at once; one that carries an output keeps it until the
image is stored, and only its thumbnail is left. Jobs beyond the slots wait holding nothing
but their ids.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from orchestrator.runpod import RunPodJob


def carries_output(status: RunPodJob) -> bool:
    """True for a COMPLETED answer with an output: it keeps its slot until stored."""
    return status.status == "COMPLETED" and status.output is not None


class OutputSlots:
    """`slots` places for finished outputs, taken around each `/status` call."""

    def __init__(self, slots: int = 4) -> None:
        self.slots = slots
        self._free = asyncio.Semaphore(slots)

    async def status(self, fetch: Callable[[], Awaitable[RunPodJob]]) -> RunPodJob:
        """`fetch()` in a slot. The slot stays taken when the answer carries an output: whoever
        gets it must pass it to `held` (which gives the slot back)."""
        await self._free.acquire()
        try:
            answer = await fetch()
        except BaseException:
            self._free.release()
            raise
        if not carries_output(answer):
            self._free.release()
        return answer

    @asynccontextmanager
    async def held(self, answer: RunPodJob) -> AsyncIterator[None]:
        """The block that consumes `answer`'s output; its slot is given back afterwards."""
        try:
            yield
        finally:
            if carries_output(answer):
                self._free.release()

    @property
    def free(self) -> int:
        """Slots not taken now (for tests and metrics)."""
        return self._free._value
