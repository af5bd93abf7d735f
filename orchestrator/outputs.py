"""How many finished outputs this process holds at once (OUTPUT_SLOTS).

A `/status` answer for a COMPLETED job carries the whole image (megabytes of base64). Without a
bound, a burst of jobs finishing together each holds its answer while it waits for the CPU lane
to decode it: measured with 200 jobs and 1 MP outputs (`bench/full_path.py`), klein serve's peak
RSS was ~1.2 GB. So a job polls with a peek that reads past 64 KB (only an output is that
large) only when one of OUTPUT_SLOTS is free at that moment, and keeps the slot until the
image is unpacked and has room to upload (uploads.py); otherwise it leaves the answer unread,
waits for a slot and reads the answer again there. Jobs beyond the slots wait holding nothing
but their ids, and the polls of the others never wait for a slot. (Reading on halved the outputs
sent at a steady 10 jobs/s, polling: 600 answers for 300 jobs became 300, `bench/full_path.py`.)

RunPod's completion webhook carries the same status object. When its job is driven here, the
webhook waits (briefly) for a slot, its body is kept there and handed to the job (`Delivery`,
through the job's `JobWake`): the job then reads no `/status` at all, and a poll that finds the
job over waits for the webhook rather than reading the output too (await_result.WebhookGrace).
Measured with 200 jobs (`bench/full_path.py --mode webhook`): each output was otherwise sent
three times (the webhook, the peek, the read in the slot).
"""

import asyncio
import dataclasses
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from orchestrator.errors import Transient
from orchestrator.runpod import RunPodClient, RunPodJob, parse_status


def carries_output(status: RunPodJob) -> bool:
    """True for a COMPLETED answer with an output: it keeps its slot until unpacked."""
    return status.status == "COMPLETED" and status.output is not None


class Places:
    """A semaphore whose waiters are served by rank, then in order: a webhook's body, whose
    bytes are already on their way, goes before a `/status` read, which asks RunPod to send
    the output again. (asyncio.Semaphore serves its waiters in arrival order only.)"""

    FIRST, LATER = 0, 1

    def __init__(self, count: int) -> None:
        self._free = count
        self._waiting: tuple[deque[asyncio.Future[None]], ...] = (deque(), deque())

    def take_free(self) -> bool:
        """A place now, if one is free and nobody waits for it (True); never waits."""
        if self._free > 0 and not any(self._waiting):
            self._free -= 1
            return True
        return False

    async def acquire(self, rank: int) -> None:
        """A place; waits (by rank) when none is free."""
        if self.take_free():
            return
        granted = asyncio.get_running_loop().create_future()
        self._waiting[rank].append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # granted as it was cancelled: pass the place on
            elif granted in self._waiting[rank]:
                self._waiting[rank].remove(granted)
            raise

    def release(self) -> None:
        """Give a place back: to the first waiter of the best rank, or to the free count."""
        for queue in self._waiting:
            while queue:
                granted = queue.popleft()
                if not granted.done():
                    granted.set_result(None)
                    return
        self._free += 1


class OutputSlots:
    """`slots` places for finished outputs (OUTPUT_SLOTS)."""

    def __init__(self, slots: int = 4) -> None:
        self.slots = slots
        self._free = Places(slots)
        self.taken = 0

    async def delivery(self, wait_s: float) -> "Delivery | None":
        """A slot for a completion webhook's body, waited for at most `wait_s`, ahead of the
        jobs waiting to read theirs from `/status`. Meanwhile the body stays unread in the
        socket, so waiting costs no memory; past `wait_s` the webhook is scanned, not kept."""
        try:
            async with asyncio.timeout(wait_s):
                await self._free.acquire(Places.FIRST)
        except TimeoutError:
            return None
        self.taken += 1
        return Delivery(self)

    def adopt(self, runpod_id: str, delivery: "Delivery") -> RunPodJob | None:
        """The delivered status of RunPod job `runpod_id`, keeping the delivery's slot when it
        carries the output (as `status` does); None, and the slot given back, when the body is
        not that job's end (a stray's, unreadable, or not finished)."""
        try:
            answer = parse_status(runpod_id, delivery.take())
        except Transient:
            answer = None
        except BaseException:  # a failure nobody planned for: the slot goes back
            delivery.release()
            raise
        if answer is None or answer.id != runpod_id or not answer.finished:
            delivery.release()
            return None
        if not carries_output(answer):
            delivery.release()
            return answer
        delivery.keep()
        return dataclasses.replace(answer, in_slot=True)

    async def status(
        self,
        runpod: RunPodClient,
        job_id: str,
        wake: "JobWake",
        *,
        read: bool = True,
        over: bool = False,
    ) -> RunPodJob:
        """The job's status. A peek first, unless the job is known to be `over` (a peek found
        it so, or its webhook came): then, to `read`, it waits for a slot and reads there, as a
        peek without a free slot would have had RunPod send the whole output for nothing. An
        answer too large to peek at (an output) is read on when a slot is free at once (so
        each output crosses the network once), else read again once a slot is free. The slot
        stays with the answer (`in_slot`) when it carries the output: whoever gets it must
        consume it inside `held`, which gives the slot back. Such an answer comes back
        `unread` (the job is over) without `read`, or when the job's webhook delivers its body
        (in a slot of its own) while it waits for a slot: a job never waits for a slot while
        holding one, so the slots cannot all wait on each other."""
        if read and over:
            if not await self._acquire_unless_delivered(wake):
                return RunPodJob(id=job_id, status="UNREAD", unread=True)
            answer = await self._read_in_slot(runpod, job_id)
            wake.missed = False  # read: a later attempt's webhook is waited for as usual
            return answer
        room = _RoomNow(self._free, enabled=read and not wake.has_delivery())
        try:
            answer = await runpod.peek(job_id, room.take)
        except BaseException:
            if room.taken:
                self._free.release()
            raise
        if room.taken:
            self.taken += 1
            return self._kept_if_output(answer)
        if not answer.unread or not read or not await self._acquire_unless_delivered(wake):
            return answer
        return await self._read_in_slot(runpod, job_id)

    async def _read_in_slot(self, runpod: RunPodClient, job_id: str) -> RunPodJob:
        """The job's whole status, read in the slot just acquired."""
        self.taken += 1
        try:
            answer = await runpod.status(job_id)
        except BaseException:
            self._give_back()
            raise
        return self._kept_if_output(answer)

    def _kept_if_output(self, answer: RunPodJob) -> RunPodJob:
        """`answer`, keeping its slot when it carries the output; else the slot goes back."""
        if not carries_output(answer):
            self._give_back()
            return answer
        return dataclasses.replace(answer, in_slot=True)

    async def _acquire_unless_delivered(self, wake: "JobWake") -> bool:
        """A slot (True), or False once a delivery for the job came first."""
        if wake.has_delivery():
            return False
        acquiring = asyncio.ensure_future(self._free.acquire(Places.LATER))
        delivered = asyncio.ensure_future(wake.delivered.wait())
        try:
            await asyncio.wait((acquiring, delivered), return_when=asyncio.FIRST_COMPLETED)
        finally:
            delivered.cancel()
            if not acquiring.done():
                acquiring.cancel()
        try:
            await acquiring
        except asyncio.CancelledError:
            if not wake.has_delivery():  # cancelled from outside, not by a delivery
                raise
            return False
        if wake.has_delivery():  # both at once: the delivery is used, the slot goes back
            self._free.release()
            return False
        return True

    def held(self, answer: RunPodJob) -> "Held":
        """The block that consumes `answer`'s output; its slot, if any, is given back after.
        Only whether it holds one is kept, so the block may drop the answer (megabytes of
        base64) before it ends."""
        return Held(self, in_slot=answer.in_slot)

    def _give_back(self) -> None:
        self.taken -= 1
        self._free.release()


class Held:
    """OutputSlots.held's block: gives the answer's slot back, if it had one, when it ends."""

    def __init__(self, slots: OutputSlots, *, in_slot: bool) -> None:
        self._slots = slots
        self._in_slot = in_slot

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc_info: object) -> None:
        if self._in_slot:
            self._in_slot = False
            self._slots._give_back()


class _RoomNow:
    """Whether a peek may read on into an output: a slot taken at once, or none (never waits)."""

    def __init__(self, places: Places, *, enabled: bool) -> None:
        self._places = places
        self._enabled = enabled
        self.taken = False

    def take(self) -> bool:
        """Take a free slot for the answer being read (at most once); False when none is."""
        if self._enabled and not self.taken:
            self.taken = self._places.take_free()
        return self.taken


class Delivery:
    """A completion webhook's body on its way to its job, in an output slot: as read (`body`),
    then parsed once (`status`) by whoever takes it from the webhook. Whoever holds it last
    gives the slot back (`release`, idempotent), or keeps it with the answer (`keep`)."""

    def __init__(self, slots: OutputSlots) -> None:
        self._slots = slots
        self._held = True
        self.body = b""
        self.status: object = None
        self.handed_over = False  # to its job (JobWake.deliver)

    def take(self) -> object:
        """The parsed body, no longer kept here."""
        status, self.status = self.status, None
        return status

    def keep(self) -> None:
        """The slot now belongs to the answer made of the body (`in_slot`)."""
        self._held = False

    def release(self) -> None:
        """Give the slot back (once)."""
        self.body, self.status = b"", None
        if self._held:
            self._held = False
            self._slots._give_back()


class JobWake(asyncio.Event):
    """A job's wake-up (RunPod's webhook, the user's cancellation), with at most one delivered
    completion body waiting for it."""

    def __init__(self) -> None:
        super().__init__()
        self._delivery: Delivery | None = None
        self.delivered = asyncio.Event()  # set while a delivery waits to be taken
        self.accepting = False  # True while the job waits for RunPod (await_result)
        self.incoming = 0  # webhooks for the job waiting for a slot to keep their body in
        # A completion webhook came for the job and found no slot for its body: the output is
        # to be read from /status, in a slot, without a peek first and without waiting for the
        # webhook (await_result.WebhookGrace); reset once that read is done.
        self.missed = False

    def has_delivery(self) -> bool:
        """True while a delivered body waits to be taken."""
        return self._delivery is not None

    def deliver(self, delivery: Delivery) -> None:
        """Hand the job a body (a later one replaces an earlier one) and wake it; a job not
        waiting for RunPod (it has its result, or has none yet) gets nothing, and the slot
        goes back at once."""
        delivery.handed_over = True
        if not self.accepting:
            delivery.release()
            self.set()
            return
        if self._delivery is not None:
            self._delivery.release()
        self._delivery = delivery
        self.delivered.set()
        self.set()

    def take(self) -> Delivery | None:
        """The delivered body, if any; the caller now owns its slot."""
        delivery, self._delivery = self._delivery, None
        self.delivered.clear()
        return delivery

    @contextmanager
    def awaiting(self) -> Iterator[None]:
        """The block in which the job waits for RunPod and takes deliveries; whatever was
        delivered and not taken is given back when it ends."""
        self.accepting = True
        try:
            yield
        finally:
            self.accepting = False
            self.discard()

    def discard(self) -> None:
        """Give back what was delivered and never taken."""
        delivery = self.take()
        if delivery is not None:
            delivery.release()
