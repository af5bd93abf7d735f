"""Output slots: polls peek without reading an output unless a slot is free at once; otherwise
the output is read again in a slot, which it keeps until consumed, so a burst of finished jobs
holds at most OUTPUT_SLOTS outputs.

RunPod is played at the HTTP level (httpx.MockTransport answers `/status` as RunPod does)."""

import asyncio
import contextlib
import gc
import json
import weakref
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest

from orchestrator.errors import RunPodJobGone, Transient
from orchestrator.outputs import JobWake, OutputSlots, Places
from orchestrator.runpod import JSON_ON_LOOP_MAX_BYTES, Progress, RunPodClient

BIG_IMAGE = "A" * (2 * JSON_ON_LOOP_MAX_BYTES)
DELAY_MS, EXECUTION_MS = 1234, 5678


class RunPod:
    """`/status/{id}` answers by job id: 'big-*' COMPLETED with a large output, 'small-*'
    COMPLETED with a small one, 'running-*' IN_PROGRESS, 'gone-*' 404, 'broken-*' a large
    answer whose connection breaks after 100 KB; with `fail_second_call`, each job's second
    call gets a 500."""

    def __init__(self, *, chunked: bool = False) -> None:
        self.calls: Counter[str] = Counter()
        self.fail_second_call = False
        self.chunked = chunked

    def __call__(self, request: httpx.Request) -> httpx.Response:
        job_id = request.url.path.rsplit("/", 1)[-1]
        self.calls[job_id] += 1
        if self.fail_second_call and self.calls[job_id] == 2:
            return httpx.Response(500, json={"error": "boom"})
        if job_id.startswith("gone"):
            return httpx.Response(404, json={"error": "job not found"})
        if job_id.startswith("running"):
            return httpx.Response(200, json={"id": job_id, "status": "IN_PROGRESS"})
        if job_id.startswith("sampling"):
            report = {"stage": "sampling", "step": 2, "steps": 4}
            return httpx.Response(
                200, json={"id": job_id, "status": "IN_PROGRESS", "output": report}
            )
        image = BIG_IMAGE if job_id.startswith("big") else "AAAA"
        body = json.dumps(
            {
                "id": job_id,
                "status": "COMPLETED",
                "output": {"image": image},
                "delayTime": DELAY_MS,
                "executionTime": EXECUTION_MS,
            }
        )
        if job_id.startswith("broken"):
            return httpx.Response(200, content=_broken(body.encode()))
        if self.chunked:
            return httpx.Response(200, content=_chunks(body.encode()))
        return httpx.Response(200, content=body.encode())


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 8192):
        yield body[start : start + 8192]


async def _broken(body: bytes) -> AsyncIterator[bytes]:
    yield body[: 100 * 1024]
    raise httpx.RemoteProtocolError("peer closed connection without sending complete message")


def client(runpod: RunPod) -> RunPodClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(runpod))
    return RunPodClient(http, "http://runpod.test/v2", "ep", "key")


def test_a_running_job_is_read_by_the_peek_alone_and_takes_no_slot():
    async def scenario() -> None:
        runpod, slots = RunPod(), OutputSlots(1)
        answer = await slots.status(client(runpod), "running-1", JobWake())
        assert (answer.status, answer.in_slot, slots.taken) == ("IN_PROGRESS", False, 0)
        assert runpod.calls["running-1"] == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_large_output_is_read_on_in_a_free_slot_that_it_keeps_until_consumed(chunked: bool):
    async def scenario() -> None:
        runpod, slots = RunPod(chunked=chunked), OutputSlots(1)
        peeked = await client(runpod).peek("big-1")  # no room offered: left unread
        assert (peeked.unread, peeked.finished, peeked.output) == (True, False, None)
        answer = await slots.status(client(runpod), "big-1", JobWake())
        assert (answer.status, answer.in_slot, slots.taken) == ("COMPLETED", True, 1)
        assert answer.output == {"image": BIG_IMAGE}
        assert runpod.calls["big-1"] == 2  # the peek above, then one read: the output once
        async with slots.held(answer):
            assert slots.taken == 1
        assert slots.taken == 0

    asyncio.run(scenario())


def test_without_read_a_large_output_is_left_unread_even_with_a_slot_free():
    async def scenario() -> None:
        runpod, slots = RunPod(), OutputSlots(1)
        answer = await slots.status(client(runpod), "big-1", JobWake(), read=False)
        assert (answer.unread, answer.in_slot, slots.taken) == (True, False, 0)
        assert runpod.calls["big-1"] == 1

    asyncio.run(scenario())


def test_a_small_output_comes_with_the_peek_and_takes_no_slot():
    async def scenario() -> None:
        runpod, slots = RunPod(), OutputSlots(1)
        answer = await slots.status(client(runpod), "small-1", JobWake())
        assert (answer.status, answer.in_slot) == ("COMPLETED", False)
        assert answer.output == {"image": "AAAA"}
        async with slots.held(answer):
            pass
        assert slots.taken == 0  # nothing given back that was not taken

    asyncio.run(scenario())


def test_outputs_beyond_the_slots_wait_and_polls_of_running_jobs_do_not():
    async def scenario() -> None:
        runpod, slots = RunPod(), OutputSlots(1)
        rp = client(runpod)
        first = await slots.status(rp, "big-1", JobWake())
        second = asyncio.create_task(slots.status(rp, "big-2", JobWake()))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not second.done()  # peeked, and waiting for the slot
        assert runpod.calls["big-2"] == 1
        running = await slots.status(
            rp, "running-1", JobWake()
        )  # a poll is not held up by the outputs
        assert running.status == "IN_PROGRESS"
        async with slots.held(first):
            pass
        answer = await second
        assert (answer.in_slot, slots.taken, runpod.calls["big-2"]) == (True, 1, 2)

    asyncio.run(scenario())


def test_a_failed_read_in_the_slot_gives_the_slot_back():
    async def scenario() -> None:
        runpod, slots = RunPod(), OutputSlots(1)
        runpod.fail_second_call = True
        rp = client(runpod)
        first = await slots.status(rp, "big-1", JobWake())  # read on: holds the one slot
        waiting = asyncio.create_task(slots.status(rp, "big-2", JobWake()))
        for _ in range(20):
            await asyncio.sleep(0)
        async with slots.held(first):
            pass
        with pytest.raises(Transient):
            await waiting  # its read again, in the slot, gets a 500
        assert (slots.taken, runpod.calls["big-2"]) == (0, 2)
        again = await slots.status(rp, "big-3", JobWake())
        assert (again.in_slot, slots.taken) == (True, 1)  # the slot was given back

    asyncio.run(scenario())


def test_a_connection_broken_while_reading_on_gives_the_slot_back():
    async def scenario() -> None:
        runpod, slots = RunPod(), OutputSlots(1)
        rp = client(runpod)
        with pytest.raises(Transient):
            await slots.status(rp, "broken-1", JobWake())
        assert slots.taken == 0
        answer = await slots.status(rp, "big-1", JobWake())
        assert (answer.in_slot, slots.taken, runpod.calls["big-1"]) == (True, 1, 1)

    asyncio.run(scenario())


def test_a_job_runpod_forgot_is_said_so_by_the_peek():
    async def scenario() -> None:
        with pytest.raises(RunPodJobGone):
            await OutputSlots(1).status(client(RunPod()), "gone-1", JobWake())

    asyncio.run(scenario())


@pytest.mark.parametrize("job_id", ["small-1", "big-1"], ids=["peeked", "read-in-a-slot"])
def test_an_output_keeps_runpods_timings_however_it_was_read(job_id: str):
    """The dashboard's queue and GPU timings come from these fields (orchestrator/timings.py)."""

    async def scenario() -> None:
        slots = OutputSlots(1)
        answer = await slots.status(client(RunPod()), job_id, JobWake())
        assert (answer.delay_time, answer.execution_time) == (DELAY_MS, EXECUTION_MS)
        async with slots.held(answer):
            pass

    asyncio.run(scenario())


def test_a_peek_carries_the_workers_progress():
    async def scenario() -> None:
        answer = await OutputSlots(1).status(client(RunPod()), "sampling-1", JobWake())
        assert answer.progress == Progress("sampling", step=2, steps=4)

    asyncio.run(scenario())


def test_a_webhooks_body_is_served_before_an_earlier_status_read():
    async def scenario() -> list[str]:
        places, served = Places(1), []
        await places.acquire(Places.LATER)  # the only place, taken

        async def take(name: str, rank: int) -> None:
            await places.acquire(rank)
            served.append(name)
            places.release()

        reads = [asyncio.create_task(take(f"read-{i}", Places.LATER)) for i in range(2)]
        await asyncio.sleep(0)
        webhook = asyncio.create_task(take("webhook", Places.FIRST))
        await asyncio.sleep(0)
        places.release()
        await asyncio.gather(*reads, webhook)
        return served

    assert asyncio.run(scenario()) == ["webhook", "read-0", "read-1"]


def test_a_cancelled_wait_loses_no_place():
    async def scenario() -> tuple[bool, int]:
        places = Places(1)
        await places.acquire(Places.LATER)
        waiting = asyncio.create_task(places.acquire(Places.FIRST))
        await asyncio.sleep(0)
        places.release()  # granted to the waiter...
        waiting.cancel()  # ...which is cancelled before it runs: the place must not be lost
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        try:
            async with asyncio.timeout(0.5):
                await places.acquire(Places.LATER)
        except TimeoutError:
            return False, places._free
        return True, places._free

    assert asyncio.run(scenario()) == (True, 0)


def test_the_slots_block_keeps_no_hold_on_the_answer():
    """The flow drops the answer (megabytes of base64) once its image is unpacked, while it
    still waits in the slot for upload room: nothing of the block may keep the answer alive."""

    async def scenario() -> tuple[bool, int, int]:
        slots = OutputSlots(1)
        answer = await slots.status(client(RunPod()), "big-1", JobWake())
        kept = weakref.ref(answer)
        async with slots.held(answer):
            del answer
            gc.collect()
            alive, taken_inside = kept() is not None, slots.taken
        return alive, taken_inside, slots.taken

    assert asyncio.run(scenario()) == (False, 1, 0)
