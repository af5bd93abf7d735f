"""RunPod's completion webhook carries the whole status object: when there is room to keep it,
its job takes its result from it and reads no /status; when there is not, or the body is not
its recorded job's end, the job goes on polling. Real PostgreSQL, the running Orchestrator,
its HTTP app (in-process), and a local RunPod endpoint whose worker never finishes (so a poll
could never have given the result)."""

import asyncio
import base64
import contextlib
import io
import json
import random
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import replace

import httpx
import pytest
from PIL import Image

from devtools.endpoint.config import EndpointConfig
from devtools.endpoint.server import EndpointServer
from orchestrator.cpu import CpuLane
from orchestrator.http import create_app
from orchestrator.metrics import Metrics
from orchestrator.outputs import JobWake, OutputSlots
from orchestrator.runpod import JSON_ON_LOOP_MAX_BYTES, RunPodClient
from tests.integration.faultkit import job_state, running, until_finished
from tests.integration.flowkit import ScriptedWorker, insert, png_b64, rows

PROMPT = {"prompt": "make it red", "image_base64": png_b64()}


def completed_body(runpod_id: str, size=(96, 64)) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    output = {"image": image, "seed": 7, "prompt_id": "p", "width": size[0], "height": size[1]}
    return {"id": runpod_id, "status": "COMPLETED", "output": output, "executionTime": 900}


async def recorded(url: str, job_id: str) -> dict:
    """The job's row once its RunPod job id is recorded (it waits for RunPod)."""
    for _ in range(200):
        row = await asyncio.to_thread(job_state, url, job_id)
        if row["runpod_job_id"] is not None:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError("the job was never submitted")


async def submit_then_post_webhook(
    url, orchestrator, body_for, *, raw=False, before_post=None
) -> tuple[str, httpx.Response]:
    """Insert a job, wait until RunPod has it (and `await before_post()`, if given), and post
    its completion webhook (`body_for(runpod_id)`: JSON, or with `raw` the body's bytes as
    they are to be sent) through the orchestrator's HTTP app, within 10 s: (job id, the app's
    answer)."""
    deps = orchestrator.deps
    app = create_app(deps.settings, deps.db, orchestrator, Metrics())
    job_id, _ = insert(url, PROMPT)
    orchestrator.nudge()
    row = await recorded(url, job_id)
    if before_post is not None:
        await before_post()
    body = body_for(row["runpod_job_id"])
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://klein") as client:
        answer = await asyncio.wait_for(
            client.post(
                f"/runpod/webhook/{row['token']}",
                **({"content": body} if raw else {"json": body}),
            ),
            10,
        )
    return job_id, answer


def with_webhooks(url, endpoint, openrouter_server, tmp_path, **settings):
    """A running Orchestrator with RunPod's completion webhook on (the tests post it
    themselves) and, unless told otherwise, no poll between the webhook and the job's end."""
    return running(
        url,
        endpoint,
        openrouter_server,
        tmp_path,
        **({"public_base_url": "http://127.0.0.1:9", "poll_min_interval_s": 60} | settings),
    )


@asynccontextmanager
async def one_slot_taken(url, endpoint, openrouter_server, tmp_path, **settings):
    """`with_webhooks` with a single output slot, already taken: (the Orchestrator, the
    slot's Delivery, to release when the test lets the job have it)."""
    async with with_webhooks(
        url,
        endpoint,
        openrouter_server,
        tmp_path,
        wrap=lambda deps: replace(deps, outputs=OutputSlots(1)),
        **settings,
    ) as orchestrator:
        yield orchestrator, await orchestrator.deps.outputs.delivery(1)


@pytest.fixture
def slot_taken(migrated_url, openrouter_server, tmp_path):
    """`slot_taken(endpoint, **settings)`: `one_slot_taken` on the test's database, OpenRouter
    double and folder."""

    def start(endpoint, **settings):
        return one_slot_taken(migrated_url, endpoint, openrouter_server, tmp_path, **settings)

    return start


def scenario(
    url, endpoint, openrouter_server, tmp_path, body_for, *, raw=False, wait_s=5, **settings
):
    """Run one job until RunPod has it, post its completion webhook (`body_for(runpod_id)`,
    JSON or with `raw` bytes), and return the webhook's answer, the job's row once it finished
    or `wait_s` passed, and the slots in use."""

    async def run():
        async with with_webhooks(
            url, endpoint, openrouter_server, tmp_path, **settings
        ) as orchestrator:
            job_id, answer = await submit_then_post_webhook(url, orchestrator, body_for, raw=raw)
            with contextlib.suppress(AssertionError):  # a job still waiting is an answer too
                await until_finished(url, job_id, wait_s)
            return answer, rows(url, job_id)[0], orchestrator.deps.outputs.taken

    return asyncio.run(run())


def test_a_delivered_completion_finishes_the_job_without_reading_status(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    release = threading.Event()
    endpoint = endpoint_for(ScriptedWorker(block=release))
    try:
        answer, row, taken = scenario(
            migrated_url, endpoint, openrouter_server, tmp_path, completed_body
        )
    finally:
        release.set()
    assert answer.status_code == 200
    assert (row["job_status"], row["status"]) == ("completed", "completed")
    assert (row["output_data_json"]["width"], row["output_data_json"]["height"]) == (96, 64)
    assert row["generation_metadata"]["seed"] == 7
    assert taken == 0  # the slot the body was kept in is free again


def test_a_body_that_is_not_the_recorded_jobs_end_is_not_taken_for_it(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    release = threading.Event()
    endpoint = endpoint_for(ScriptedWorker(block=release))

    def still_running(runpod_id: str) -> dict:
        return {"id": runpod_id, "status": "IN_PROGRESS"}

    try:
        answers = [
            scenario(migrated_url, endpoint, openrouter_server, tmp_path, still_running),
            scenario(
                migrated_url,
                endpoint,
                openrouter_server,
                tmp_path,
                lambda runpod_id: completed_body(runpod_id) | {"output": {"image": "@@"}},
            ),
        ]
    finally:
        release.set()
    (running_answer, running_row, running_taken), (bad_answer, bad_row, bad_taken) = answers
    assert running_answer.status_code == 200
    assert running_row["job_status"] == "taken"  # still waiting for RunPod
    assert running_taken == 0
    assert bad_answer.status_code == 200
    # A COMPLETED body with an output that is no image: the work fails as from /status.
    assert (bad_row["job_status"], bad_row["status"]) == ("failed", "failed")
    assert bad_row["error_message"] == "RunPod returned an invalid image"
    assert bad_taken == 0


def test_a_kept_body_that_cannot_be_parsed_is_answered_and_its_slot_given_back(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    """Bodies only a sender with the job's token can post, but hostile ones: not JSON at all,
    and JSON nested past Python's recursion limit (over 64 KB, so parsed in the CPU lane)."""
    release = threading.Event()
    endpoint = endpoint_for(ScriptedWorker(block=release))
    bodies = (b'{"id": "x", "status": "COMPLETED", "output": ', b"[" * 100_000)
    try:
        results = [
            scenario(
                migrated_url,
                endpoint,
                openrouter_server,
                tmp_path,
                lambda _runpod_id, body=body: body,
                raw=True,
                wait_s=0.5,
            )
            for body in bodies
        ]
    finally:
        release.set()
    for answer, row, taken in results:
        assert answer.status_code == 200  # taken: the job reads its status itself
        assert row["job_status"] == "taken"  # still waiting for RunPod, not failed by the body
        assert taken == 0


def test_without_room_for_the_body_the_job_polls_as_before(migrated_url, endpoint_for, slot_taken):
    release = threading.Event()
    endpoint = endpoint_for(ScriptedWorker(block=release))

    try:

        async def run():
            async with slot_taken(
                endpoint, poll_min_interval_s=0.1, webhook_slot_wait_s=0.2, webhook_grace_s=0.1
            ) as (orchestrator, held):
                job_id, answer = await submit_then_post_webhook(
                    migrated_url, orchestrator, completed_body
                )
                await asyncio.sleep(0.5)
                waiting = await asyncio.to_thread(job_state, migrated_url, job_id)
                release.set()  # the worker finishes; its real output is read from /status
                held.release()
                await until_finished(migrated_url, job_id, 10)
                return answer, waiting, rows(migrated_url, job_id)[0]

        answer, waiting, finished = asyncio.run(run())
    finally:
        release.set()
    assert answer.status_code == 200
    assert waiting["status"] == "taken"  # the webhook's body was not kept: nothing to finish with
    assert finished["job_status"] == "completed"
    # Its output came from /status (the worker's 320x240), not from the webhook's body (96x64).
    assert finished["output_data_json"]["width"] == 320


class StatusReads:
    """ASGI middleware for the RunPod endpoint double: the paths of the `/status` requests it
    got, in order (what a peek or a read costs RunPod: each sends the whole answer)."""

    def __init__(self, app, seen: list[str]):
        self.app = app
        self.seen = seen

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and "/status/" in scope["path"]:
            self.seen.append(scope["path"])
        await self.app(scope, receive, send)


def test_a_job_whose_webhook_found_no_room_reads_its_status_once_without_a_peek(
    migrated_url, slot_taken
):
    """A webhook that found no slot has shown the job over: the job waits for a slot and reads
    /status there, once, as soon as the slot is free (before 2026-12-03 it waited up to 30 s
    more for the webhook that had come, while others kept arriving). A peek first would have
    had RunPod send the whole output for nothing (a full answer from the endpoint's side,
    unread on ours) while no slot was free."""
    release, worker, endpoint, reads = held_back_endpoint()

    async def run():
        async with slot_taken(endpoint, webhook_slot_wait_s=0.2) as (orchestrator, held):
            before: list[int] = []

            async def finish_on_runpod():
                release.set()
                await asyncio.to_thread(worker_done, endpoint, worker)
                before.append(len(reads))

            job_id, answer = await submit_then_post_webhook(
                migrated_url, orchestrator, completed_body, before_post=finish_on_runpod
            )
            await asyncio.sleep(0.3)  # the job now waits for the slot
            reads_while_waiting = len(reads) - before[0]
            held.release()
            with contextlib.suppress(AssertionError):
                await until_finished(migrated_url, job_id, 5)
            return answer, rows(migrated_url, job_id)[0], reads_while_waiting, before[0]

    try:
        answer, finished, reads_while_waiting, first = asyncio.run(run())
    finally:
        release.set()
        endpoint.stop()
    assert answer.status_code == 200
    assert finished["job_status"] == "completed"
    assert finished["output_data_json"]["width"] == 256  # from /status, not the webhook's body
    assert reads_while_waiting == 0
    assert len(reads) - first == 1, reads


def held_back_endpoint() -> tuple[threading.Event, ScriptedWorker, EndpointServer, list[str]]:
    """A counting endpoint (`counting_endpoint`) whose worker answers with an output too large
    to peek at once `release` is set: (release, the worker, the endpoint, its /status paths)."""
    release = threading.Event()
    worker = ScriptedWorker(output={"image": noisy_png_b64(), "prompt_id": "p"}, block=release)
    return release, worker, *counting_endpoint(worker)


FAST_POLLS = {"poll_min_interval_s": 0.05, "progress_write_interval_s": 0.05}


def start(url, orchestrator) -> str:
    """Insert a job and wake the orchestrator's claim loop: the job's id."""
    job_id, _ = insert(url, PROMPT)
    orchestrator.nudge()
    return job_id


def counting_endpoint(worker: ScriptedWorker) -> tuple[EndpointServer, list[str]]:
    """A started RunPod endpoint double and the paths of the `/status` requests it gets."""
    endpoint = EndpointServer(EndpointConfig(endpoint_id="local"), worker)
    reads: list[str] = []
    endpoint.app.add_middleware(StatusReads, seen=reads)
    endpoint.start()
    return endpoint, reads


def test_a_job_seen_over_waits_for_a_slot_without_asking_again(migrated_url, slot_taken):
    """A poll found the job over (its output too large to peek at, no slot free); its webhook
    does not come within the grace. The job then waits for a slot and reads /status there:
    no request while every slot is taken (a peek then had RunPod send the whole output for
    nothing), one once a slot is free."""
    release, worker, endpoint, reads = held_back_endpoint()

    async def run():
        async with slot_taken(endpoint, **FAST_POLLS, webhook_grace_s=0.1) as (orchestrator, held):
            job_id = start(migrated_url, orchestrator)
            await recorded(migrated_url, job_id)
            release.set()
            await asyncio.to_thread(worker_done, endpoint, worker)
            done_at = len(reads)
            await asyncio.sleep(1.0)  # the grace passes ten times over
            while_held = len(reads) - done_at
            held.release()
            await until_finished(migrated_url, job_id, 5)
            return rows(migrated_url, job_id)[0], while_held, len(reads) - done_at

    try:
        finished, while_held, after_done = asyncio.run(run())
    finally:
        release.set()
        endpoint.stop()
    assert finished["job_status"] == "completed"
    assert while_held <= 1  # at most the poll that found the job over
    assert after_done == while_held + 1  # then the read in the slot


def test_a_job_waiting_for_a_slot_still_ends_at_its_deadline(migrated_url, slot_taken):
    """Over, its webhook never coming, and no slot ever free: the job ends at JOB_TIMEOUT_S
    ("Timed out", its RunPod job cancelled) instead of waiting for a slot for ever."""
    worker = ScriptedWorker(output={"image": noisy_png_b64(), "prompt_id": "p"})
    endpoint, _ = counting_endpoint(worker)

    async def run():
        async with slot_taken(endpoint, **FAST_POLLS, webhook_grace_s=0.1, job_timeout_s=1.5) as (
            orchestrator,
            _held,
        ):
            job_id = start(migrated_url, orchestrator)
            return await until_finished(migrated_url, job_id, 10)

    try:
        finished, took_s = asyncio.run(run())
    finally:
        endpoint.stop()
    assert finished["status"] == "failed"
    assert finished["error_message"].startswith("Timed out after 1.5 s")
    assert took_s < 5


def test_a_job_seen_over_does_not_wait_out_other_jobs_webhooks(
    migrated_url, openrouter_server, tmp_path
):
    """Other jobs' webhooks keep arriving (and taking slots briefly); this job's never
    comes. Once its grace is over it reads /status when a slot is free, instead of waiting
    (up to 30 s before 2026-12-04) for as long as the others flow."""
    worker = ScriptedWorker(output={"image": noisy_png_b64(), "prompt_id": "p"})
    endpoint, _ = counting_endpoint(worker)

    async def others_flowing(outputs: OutputSlots, stop: asyncio.Event) -> None:
        while not stop.is_set():
            delivery = await outputs.delivery(1)
            await asyncio.sleep(0.01)
            if delivery is not None:
                delivery.release()
            await asyncio.sleep(0.04)

    async def run():
        async with with_webhooks(
            migrated_url,
            endpoint,
            openrouter_server,
            tmp_path,
            **FAST_POLLS,
            webhook_grace_s=0.2,
        ) as orchestrator:
            stop = asyncio.Event()
            flowing = asyncio.create_task(others_flowing(orchestrator.deps.outputs, stop))
            try:
                job_id = start(migrated_url, orchestrator)
                return await until_finished(migrated_url, job_id, 10)
            finally:
                stop.set()
                await flowing

    try:
        finished, took_s = asyncio.run(run())
    finally:
        endpoint.stop()
    assert finished["status"] == "completed"
    assert took_s < 5


def worker_done(endpoint: EndpointServer, worker: ScriptedWorker) -> None:
    """Block until the endpoint has the worker's only job COMPLETED (asked of it directly,
    not over HTTP: the test counts the /status requests)."""
    for _ in range(200):
        job = endpoint.endpoint.job(worker.job_ids[0]) if worker.job_ids else None
        if job is not None and job.status == "COMPLETED":
            return
        time.sleep(0.025)
    raise AssertionError("the endpoint never completed the job")


def noisy_png_b64(side=256) -> str:
    """An output too large to peek at (over 64 KB)."""
    pixels = random.Random(7).randbytes(side * side * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_job_waiting_for_a_slot_takes_its_delivered_body_instead(endpoint_for):
    """Every slot held, one of them by the job's own delivered webhook body: its wait for a
    slot ends on the delivery (a job waiting while holding a slot could deadlock them all)."""
    endpoint = endpoint_for(ScriptedWorker(output={"image": noisy_png_b64(), "prompt_id": "p"}))
    runpod_id = httpx.post(f"{endpoint.api_base}/local/run", json={"input": {}}).json()["id"]

    async def run():
        async with httpx.AsyncClient(timeout=10) as http:
            runpod = RunPodClient(http, endpoint.api_base, "local", None)
            for _ in range(100):
                if (await runpod.peek(runpod_id)).unread:
                    break
                await asyncio.sleep(0.05)
            slots, wake = OutputSlots(2), JobWake()
            other, own = await slots.delivery(1), await slots.delivery(1)
            own.status = completed_body(runpod_id)
            with wake.awaiting():
                waiting = asyncio.create_task(slots.status(runpod, runpod_id, wake))
                await asyncio.sleep(0.3)
                blocked = not waiting.done()
                wake.deliver(own)
                answer = await asyncio.wait_for(waiting, 5)
                adopted = slots.adopt(runpod_id, wake.take())
                held_while_storing = slots.taken
            async with slots.held(adopted):
                pass
            other.release()
            again = [await slots.delivery(0.1) for _ in range(3)]
            return blocked, answer, adopted, held_while_storing, slots.taken, again

    blocked, answer, adopted, held_while_storing, taken, again = asyncio.run(run())
    assert blocked  # it did wait: both slots were held
    assert answer.unread
    assert (adopted.status, adopted.in_slot, adopted.output["width"]) == ("COMPLETED", True, 96)
    assert held_while_storing == 2
    assert taken == 2  # the two `again` deliveries: the slots are whole after the cancelled wait
    assert [d is not None for d in again] == [True, True, False]


def test_a_body_trickling_in_past_its_deadline_gives_its_slot_back(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    """A sender holding the job's token but sending its body byte by byte is cut off at
    WEBHOOK_BODY_DEADLINE_S: the slot it held is free again and the job is still driven."""
    release = threading.Event()
    endpoint = endpoint_for(ScriptedWorker(block=release))

    async def trickle(runpod_id: str):
        for byte in json.dumps(completed_body(runpod_id)).encode():
            yield bytes([byte])
            await asyncio.sleep(0.05)

    async def run():
        async with with_webhooks(
            migrated_url, endpoint, openrouter_server, tmp_path, webhook_body_deadline_s=0.5
        ) as orchestrator:
            job_id, answer = await submit_then_post_webhook(
                migrated_url, orchestrator, trickle, raw=True
            )
            return answer, orchestrator.deps.outputs.taken, job_id in orchestrator.in_flight

    try:
        answer, taken, driven = asyncio.run(run())
    finally:
        release.set()
    assert answer.status_code == 408
    assert "WEBHOOK_BODY_DEADLINE_S" in answer.json()["error"]
    assert taken == 0
    assert driven  # the job still waits for RunPod, and polls for its result


def test_a_failure_nobody_planned_for_while_opening_a_delivered_body_gives_its_slot_back(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    """The webhook's kept body is parsed once, for its RunPod id and for its job, in the CPU
    lane: when that fails in a way nobody planned for (here the lane is closed), the webhook
    fails, and the slot the body was kept in is free again."""
    release = threading.Event()
    endpoint = endpoint_for(ScriptedWorker(block=release))
    lane = CpuLane()
    lane.close()  # bodies over 64 KB are parsed in the lane; a closed one raises RuntimeError

    def large(runpod_id: str) -> dict:
        return completed_body(runpod_id) | {"output": {"image": "A" * JSON_ON_LOOP_MAX_BYTES}}

    async def run():
        async with httpx.AsyncClient(timeout=10) as http:
            broken = RunPodClient(http, endpoint.api_base, "local", None, cpu=lane)
            async with with_webhooks(
                migrated_url,
                endpoint,
                openrouter_server,
                tmp_path,
                wrap=lambda deps: replace(deps, runpod=broken),
            ) as orchestrator:
                try:
                    await submit_then_post_webhook(migrated_url, orchestrator, large)
                except RuntimeError as exc:
                    return type(exc), orchestrator.deps.outputs.taken
                return None, orchestrator.deps.outputs.taken

    try:
        failure, taken = asyncio.run(run())
    finally:
        release.set()
    assert failure is RuntimeError
    assert taken == 0
