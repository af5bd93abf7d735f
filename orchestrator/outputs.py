"""How many finished outputs this process holds at once (OUTPUT_SLOTS).

A `/status` answer for a COMPLETED job carries the whole image (megabytes of base64). Without a
bound, a burst of jobs finishing together each holds its answer while it waits for the CPU lane
to decode it: measured with 200 jobs and 1 MP outputs (`bench/full_path.py`), klein serve's peak
RSS was ~1.2 GB. So a job polls with a peek that does not read an answer over 64 KB (only an
output is that large); such a job then waits for one of OUTPUT_SLOTS, reads its answer again
there and keeps the slot until the image is stored and only its thumbnail is left. Jobs beyond
the slots wait holding nothing but their ids, and the polls of the others never wait for a slot.
"""

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from orchestrator.runpod import RunPodClient, RunPodJob


def carries_output(status: RunPodJob) -> bool:
    """True for a COMPLETED answer with an output: it keeps its slot until stored."""
    return status.status == "COMPLETED" and status.output is not None


class OutputSlots:
    """`slots` places for finished outputs (OUTPUT_SLOTS)."""

    def __init__(self, slots: int = 4) -> None:
        self.slots = slots
        self._free = asyncio.Semaphore(slots)
        self.taken = 0

    async def status(self, runpod: RunPodClient, job_id: str) -> RunPodJob:
        """The job's status. A peek first, outside the slots; an answer too large to peek at
        (an output) is read again in a slot, which it keeps (`in_slot`) when it carries the
        output: whoever gets it must consume it inside `held`, which gives the slot back."""
        answer = await runpod.peek(job_id)
        if not answer.unread:
            return answer
        await self._free.acquire()
        self.taken += 1
        try:
            answer = await runpod.status(job_id)
        except BaseException:
            self._give_back()
            raise
        if not carries_output(answer):
            self._give_back()
            return answer
        return dataclasses.replace(answer, in_slot=True)

    @asynccontextmanager
    async def held(self, answer: RunPodJob) -> AsyncIterator[None]:
        """The block that consumes `answer`'s output; its slot, if any, is given back after."""
        try:
            yield
        finally:
            if answer.in_slot:
                self._give_back()

    def _give_back(self) -> None:
        self.taken -= 1
        self._free.release()
