"""One job through the flow when an outside system misbehaves: RunPod's rate limit and 5xx,
OpenRouter's 402 and 5xx, Supabase Storage, a user's cancellation, a repeated finalize.
Real PostgreSQL and local protocol servers, as in test_flow.py."""

import asyncio
import base64
import struct
import time
import uuid
import zlib
from dataclasses import replace

import httpx
import psycopg
import pytest

from handler.contract import ready_png
from orchestrator import finalize as flow_finalize
from orchestrator.errors import FencedOut, Permanent, WorkCancelled
from orchestrator.finalize import Stored, finalize
from orchestrator.flow import run_job
from orchestrator.jobs import Outcome
from orchestrator.outcomes import cancel, fail
from orchestrator.outputs import JobWake
from orchestrator.storage import output_path
from tests.fakes.openrouter import default_reply, is_image_request
from tests.fakes.storage import StoredObject
from tests.integration.flowkit import (
    ScriptedWorker,
    claim,
    drive,
    execute,
    flow_deps,
    insert,
    png_b64,
    rows,
    supabase_on,
)
from tests.integration.lockkit import await_a_lock_waiter, job_row_locked, work_row_free

KOREAN = "배경을 해변으로 바꿔줘"


def korean_job(url, endpoint_for, openrouter_server, tmp_path):
    """A job with the Korean prompt, driven once through the flow on a scripted worker: (the
    worker, the job's id, the outcome)."""
    worker = ScriptedWorker()
    endpoint = endpoint_for(worker)
    job_id, _ = insert(url, {"prompt": KOREAN, "image_base64": png_b64()})
    return worker, job_id, asyncio.run(drive(url, endpoint, openrouter_server, tmp_path, job_id))


def runpod_jobs(endpoint) -> int:
    """How many jobs the local endpoint was ever given."""
    return sum(endpoint.endpoint.health()["jobs"].values())


def test_runpod_rate_limit_on_run_sends_the_job_back_to_pending_for_later(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    worker = ScriptedWorker()
    endpoint = endpoint_for(worker)
    endpoint.endpoint.inject(429, times=1, route="run")
    job_id, _ = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})
    status = asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
    assert status is Outcome.RETRY_LATER
    job, _ = rows(migrated_url, job_id)
    assert (job["job_status"], job["retries"], job["deferred"]) == ("pending", 1, True)
    assert "429" in job["last_error"]
    assert job["locked_by"] is None
    assert job["status"] == "taken"  # the work is not failed; it waits for the next claim
    assert (job["error_message"], job["failed_at"]) == (None, None)
    assert worker.inputs == []


def test_runpod_status_errors_are_waited_out(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    worker = ScriptedWorker()
    endpoint = endpoint_for(worker)
    endpoint.endpoint.inject(500, times=2, route="status")
    job_id, _ = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})
    status = asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
    assert status is Outcome.COMPLETED
    job, file = rows(migrated_url, job_id)
    assert (job["job_status"], job["status"], job["attempts"]) == ("completed", "completed", 1)
    assert file is not None
    assert len(worker.inputs) == 1


def test_openrouter_out_of_credits_releases_the_job_before_any_gpu_spend(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    worker = ScriptedWorker()
    endpoint = endpoint_for(worker)
    openrouter_server.fail_next(402)
    job_id, _ = insert(migrated_url, {"prompt": KOREAN, "image_base64": png_b64()})
    status = asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
    assert status is Outcome.RETRY_LATER
    job, _ = rows(migrated_url, job_id)
    # Waiting for an operator spends none of the job's retry budget.
    assert (job["job_status"], job["retries"], job["deferred"]) == ("pending", 0, True)
    assert "402" in job["last_error"]
    assert (job["status"], job["error_message"]) == ("taken", None)
    assert len(openrouter_server.requests) == 1  # no retries burnt on a billing problem
    assert runpod_jobs(endpoint) == 0
    assert worker.inputs == []


def test_translation_failing_three_times_sends_the_korean_prompt_as_it_is(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    openrouter_server.fail_next(500, times=3)
    worker, job_id, status = korean_job(migrated_url, endpoint_for, openrouter_server, tmp_path)
    assert status is Outcome.COMPLETED
    job, _ = rows(migrated_url, job_id)
    assert worker.inputs[0]["prompt"] == KOREAN
    meta = job["generation_metadata"]
    assert (meta["translation"], meta["prompt"], meta["original_prompt"]) == (
        "fallback",
        KOREAN,
        KOREAN,
    )
    translations = [r for r in openrouter_server.requests if not is_image_request(r)]
    assert len(translations) == 3


@pytest.mark.parametrize(
    "english",
    ["an instruction " * 140, "an endless instruction " * 400],
    ids=["over-the-prompt-cap", "cut-off-at-max-tokens"],
)
def test_a_translation_the_worker_would_refuse_sends_the_korean_prompt_as_it_is(
    migrated_url, endpoint_for, openrouter_server, tmp_path, english
):
    """A translation longer than the worker takes (PROMPT_MAX_CHARS: English often runs two or
    three times the Korean's characters), or cut off at its max_tokens, would fail the job on
    the worker, or edit with half an instruction: the Korean prompt goes as it is (the text
    encoder reads Korean), as after a failed translation, without asking again."""
    openrouter_server.reply = lambda body: "제목" if is_image_request(body) else english
    worker, job_id, status = korean_job(migrated_url, endpoint_for, openrouter_server, tmp_path)
    assert status is Outcome.COMPLETED
    job, _ = rows(migrated_url, job_id)
    assert worker.inputs[0]["prompt"] == KOREAN
    assert job["generation_metadata"]["translation"] == "fallback"
    translations = [r for r in openrouter_server.requests if not is_image_request(r)]
    assert len(translations) == 1


def test_a_translation_refused_for_good_is_not_asked_again(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    """OpenRouter refuses the request itself (403: the moderation flagged the input): asking
    again would be refused too, so the Korean prompt goes as it is after one call."""
    openrouter_server.fail_next(403)
    worker, _, status = korean_job(migrated_url, endpoint_for, openrouter_server, tmp_path)
    assert status is Outcome.COMPLETED
    assert worker.inputs[0]["prompt"] == KOREAN
    translations = [r for r in openrouter_server.requests if not is_image_request(r)]
    assert len(translations) == 1


def test_a_failing_title_model_gives_the_fallback_title(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    endpoint = endpoint_for(ScriptedWorker())
    openrouter_server.fail_next(500)
    job_id, _ = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})
    status = asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
    assert status is Outcome.COMPLETED
    job, _ = rows(migrated_url, job_id)
    assert (job["status"], job["title"]) == ("completed", "I2I 작품")
    assert [is_image_request(r) for r in openrouter_server.requests] == [True]


def test_an_english_prompt_is_not_translated(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    worker = ScriptedWorker()
    endpoint = endpoint_for(worker)
    job_id, _ = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})
    status = asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
    assert status is Outcome.COMPLETED
    job, _ = rows(migrated_url, job_id)
    assert worker.inputs[0]["prompt"] == "make it red"
    assert job["generation_metadata"]["translation"] == "skipped"
    assert not any(not is_image_request(r) for r in openrouter_server.requests)


def drive_with_supabase(url, endpoint, openrouter_server, tmp_path, job_id, *, storage_server):
    """drive(), storing through Supabase Storage's API (the fake) instead of a local folder."""

    async def run():
        async with supabase_on(storage_server) as storage:
            return await drive(url, endpoint, openrouter_server, tmp_path, job_id, storage=storage)

    return asyncio.run(run())


def test_supabase_storage_gets_the_png_and_files_gets_its_public_url(
    migrated_url, endpoint_for, openrouter_server, storage_server, tmp_path
):
    endpoint = endpoint_for(ScriptedWorker())
    job_id, work_id = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})
    status = drive_with_supabase(
        migrated_url, endpoint, openrouter_server, tmp_path, job_id, storage_server=storage_server
    )
    assert status is Outcome.COMPLETED
    job, file = rows(migrated_url, job_id)
    path = f"{job['user_id']}/{work_id}/output.png"
    stored = storage_server.objects[("works", path)]
    assert stored.content_type == "image/png"
    assert stored.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert [u.upsert for u in storage_server.uploads] == [True]
    public = storage_server.public_url("works", path)
    assert (file["bucket_id"], file["path"], file["file_url"]) == ("works", path, public)
    assert job["output_data_json"]["image_url"] == public


def title_image_url(openrouter_server) -> str:
    """The image URL of the one title request the fake received."""
    [title] = [r for r in openrouter_server.requests if is_image_request(r)]
    [part] = [p for p in title["messages"][-1]["content"] if p["type"] == "image_url"]
    return part["image_url"]["url"]


@pytest.mark.parametrize("title_image", ["url", "thumbnail"])
def test_the_title_model_is_shown_the_public_url_or_a_thumbnail(
    migrated_url, endpoint_for, openrouter_server, storage_server, tmp_path, title_image
):
    endpoint = endpoint_for(ScriptedWorker())
    job_id, _ = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})

    async def run():
        async with supabase_on(storage_server) as storage:
            return await drive(
                migrated_url,
                endpoint,
                openrouter_server,
                tmp_path,
                job_id,
                storage=storage,
                title_image=title_image,
            )

    assert asyncio.run(run()) is Outcome.COMPLETED
    job, file = rows(migrated_url, job_id)
    assert job["title"] != "I2I 작품"
    shown = title_image_url(openrouter_server)
    if title_image == "url":
        assert shown == file["file_url"]
    else:
        assert shown.startswith("data:image/jpeg;base64,")


def test_the_title_is_asked_for_while_the_image_uploads(
    migrated_url, endpoint_for, openrouter_server, storage_server, tmp_path
):
    """The vision model's answer and the upload overlap: the title request reaches OpenRouter
    while Storage still holds the upload, not after it answered."""
    endpoint = endpoint_for(ScriptedWorker())
    job_id, _ = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})
    storage_server.stall_next(1.0)
    uploads_seen_by_title = []

    def reply(body):
        if is_image_request(body):
            uploads_seen_by_title.append(len(storage_server.uploads))
        return default_reply(body)

    openrouter_server.reply = reply
    status = drive_with_supabase(
        migrated_url, endpoint, openrouter_server, tmp_path, job_id, storage_server=storage_server
    )
    assert status is Outcome.COMPLETED
    assert uploads_seen_by_title == [0]
    assert len(storage_server.uploads) == 1
    job, _ = rows(migrated_url, job_id)
    assert (job["title"], job["job_status"]) == ("해변의 노을 풍경", "completed")


def test_a_failed_upload_ends_the_title_asked_for_beside_it(
    migrated_url, endpoint_for, openrouter_server, storage_server, tmp_path
):
    """Storage fails while the title is being made: the job goes back to pending and its title
    request ends with it, not left running for an image that was not stored."""
    endpoint = endpoint_for(ScriptedWorker())
    job_id, _ = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})
    openrouter_server.stall_next(10.0)  # the title: still unanswered when Storage fails
    storage_server.fail_next(500, delay_s=0.5)

    async def run():
        async with (
            supabase_on(storage_server) as storage,
            flow_deps(migrated_url, endpoint, openrouter_server, tmp_path, storage=storage) as deps,
        ):
            outcome = await run_job(await claim(deps, job_id), deps, JobWake())
            titles = [t for t in asyncio.all_tasks() if t.get_coro().__name__ == "_title"]
            return outcome, [t for t in titles if not t.done()]

    status, titles_running = asyncio.run(run())
    assert (status, titles_running) == (Outcome.RETRY_LATER, [])
    assert sum(map(is_image_request, openrouter_server.requests)) == 1
    job, file = rows(migrated_url, job_id)
    assert (job["job_status"], job["title"], file) == ("pending", None, None)


def test_a_storage_outage_sends_the_job_back_to_pending_without_failing_the_work(
    migrated_url, endpoint_for, openrouter_server, storage_server, tmp_path
):
    worker = ScriptedWorker()
    endpoint = endpoint_for(worker)
    storage_server.fail_next(500)
    job_id, _ = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})
    status = drive_with_supabase(
        migrated_url, endpoint, openrouter_server, tmp_path, job_id, storage_server=storage_server
    )
    assert status is Outcome.RETRY_LATER
    job, file = rows(migrated_url, job_id)
    assert (job["job_status"], job["retries"], job["deferred"]) == ("pending", 1, True)
    assert "500" in job["last_error"]
    assert (job["status"], job["error_message"], file) == ("processing", None, None)
    assert job["runpod_job_id"] is not None  # the next claim awaits this result, not a new one
    assert len(worker.inputs) == 1


def test_a_work_cancelled_before_the_claim_is_cancelled_without_runpod(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    worker = ScriptedWorker()
    endpoint = endpoint_for(worker)
    job_id, work_id = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})
    execute(migrated_url, "UPDATE works SET status = 'cancelled' WHERE id = %s", (work_id,))
    status = asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
    assert status is Outcome.CANCELLED
    job, _ = rows(migrated_url, job_id)
    assert (job["job_status"], job["status"]) == ("cancelled", "cancelled")
    assert job["cancelled_at"] is not None
    assert job["finished_at"] is not None
    assert runpod_jobs(endpoint) == 0
    assert worker.inputs == []


def files_count(url, work_id) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM files f JOIN works w ON f.path = w.user_id || '/' || w.id "
            "|| '/output.png' WHERE w.id = %s",
            (work_id,),
        ).fetchone()
    return row[0]


def test_finalizing_a_work_twice_leaves_one_files_row(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    endpoint = endpoint_for(ScriptedWorker())
    job_id, work_id = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})

    async def finalize_twice():
        async with flow_deps(migrated_url, endpoint, openrouter_server, tmp_path) as deps:
            job = await claim(deps, job_id)
            path = output_path(job.user_id, work_id)
            first = Stored(path, "http://x/1.png", 8, 6, None)
            await finalize(job, deps, stored=first, title="첫 제목")
            again = replace(first, url="http://x/2.png")
            with pytest.raises(Permanent, match="no longer in progress"):
                await finalize(job, deps, stored=again, title="다시")

    asyncio.run(finalize_twice())
    job, file = rows(migrated_url, job_id)
    assert files_count(migrated_url, work_id) == 1
    assert (job["status"], job["title"], file["file_url"]) == (
        "completed",
        "첫 제목",
        "http://x/1.png",
    )
    assert job["job_status"] == "completed"


def test_finalizing_a_job_another_worker_holds_writes_nothing(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    """Finalize is all or nothing, and nothing unless the job is still ours: with the job taken
    over meanwhile, no files row is written and the work is not completed."""
    endpoint = endpoint_for(ScriptedWorker())
    job_id, work_id = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})

    async def finalize_after_takeover():
        async with flow_deps(migrated_url, endpoint, openrouter_server, tmp_path) as deps:
            job = await claim(deps, job_id)
            execute(
                migrated_url, "UPDATE generation_jobs SET locked_by = 'w2' WHERE id = %s", (job_id,)
            )
            stored = Stored(output_path(job.user_id, work_id), "http://x/1.png", 8, 6, None)
            with pytest.raises(FencedOut):
                await finalize(job, deps, stored=stored, title="제목")

    asyncio.run(finalize_after_takeover())
    job, file = rows(migrated_url, job_id)
    assert files_count(migrated_url, work_id) == 0
    assert (job["status"], job["job_status"], job["locked_by"]) == ("taken", "taken", "w2")
    assert (job["title"], job["completed_at"], job["finished_at"], file) == (None, None, None, None)


ENDINGS = {
    "failed": lambda job, deps: fail(job, deps, "it broke"),
    "cancelled": cancel,
    "completed": lambda job, deps: finalize(
        job,
        deps,
        stored=Stored(output_path(job.user_id, job.work_id), "http://x/1.png", 8, 6, None),
        title="제목",
    ),
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_ending_a_job_locks_its_row_before_its_work_row(
    ending, migrated_url, endpoint_for, openrouter_server, tmp_path
):
    """Failing, cancelling and finalizing each write the job and its work in one statement that
    locks the job's row first, as the claim and `klein cancel` do: while another transaction
    holds the job's row, the statement waits for it without holding the work's row, so no two
    writers can wait on each other in opposite order (a deadlock). Then it ends both rows."""
    endpoint = endpoint_for(ScriptedWorker())
    job_id, work_id = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})

    async def end_while_the_job_row_is_held() -> bool:
        async with flow_deps(migrated_url, endpoint, openrouter_server, tmp_path) as deps:
            job = await claim(deps, job_id)
            with job_row_locked(migrated_url, job_id):
                waiting = asyncio.create_task(ENDINGS[ending](job, deps))
                await asyncio.to_thread(await_a_lock_waiter, migrated_url)
                free = await asyncio.to_thread(work_row_free, migrated_url, work_id)
            await waiting
            return free

    assert asyncio.run(end_while_the_job_row_is_held()) is True
    job, _ = rows(migrated_url, job_id)
    assert (job["status"], job["job_status"]) == (ending, ending)


def test_a_stale_holder_finishing_after_another_completed_the_work_changes_nothing(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    """w1's lease expires while it awaits RunPod; w2 resumes the same RunPod job and completes
    it; then w1 gets the result too and finalizes. w1 must stop quietly: one files row, w2's
    result kept, no error escaping run_job."""
    worker = ScriptedWorker()
    endpoint = endpoint_for(worker)
    job_id, work_id = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})
    runpod_id = httpx.post(f"{endpoint.url}/run", json={"input": {"prompt": "p"}}).json()["id"]
    execute(
        migrated_url,
        "UPDATE generation_jobs SET runpod_job_id = %s, submitted_at = now(), attempts = 1 "
        "WHERE id = %s",
        (runpod_id, job_id),
    )
    execute(migrated_url, "UPDATE works SET status = 'processing' WHERE id = %s", (work_id,))

    async def two_holders():
        async with (
            flow_deps(migrated_url, endpoint, openrouter_server, tmp_path) as first,
            flow_deps(
                migrated_url, endpoint, openrouter_server, tmp_path, worker_id="w2"
            ) as second,
        ):
            stale = await claim(first, job_id)
            execute(
                migrated_url,
                "UPDATE generation_jobs SET lease_expires_at = now() - interval '1 s' "
                "WHERE id = %s",
                (job_id,),
            )
            fresh = await claim(second, job_id)
            assert await run_job(fresh, second, JobWake()) is Outcome.COMPLETED
            return await run_job(stale, first, JobWake())

    assert asyncio.run(two_holders()) is Outcome.HANDED_OVER
    job, file = rows(migrated_url, job_id)
    assert (job["job_status"], job["status"], job["locked_by"]) == ("completed", "completed", "w2")
    assert files_count(migrated_url, work_id) == 1
    assert len(worker.inputs) == 1
    assert uuid.UUID(str(file["id"])) == uuid.UUID(str(job["output_file_id"]))


def test_a_cancellation_while_the_image_is_stored_cancels_the_job_too(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    """The user cancels after RunPod finished but before finalize: both rows end cancelled and
    no files row is left behind."""
    endpoint = endpoint_for(ScriptedWorker())
    job_id, work_id = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})

    async def cancelled_mid_store():
        async with flow_deps(migrated_url, endpoint, openrouter_server, tmp_path) as deps:
            job = await claim(deps, job_id)
            execute(migrated_url, "UPDATE works SET status = 'cancelled' WHERE id = %s", (work_id,))
            output = {"image": png_b64(), "seed": 1, "prompt_id": "p"}
            unpacked = await flow_finalize.unpack(output, deps)
            stored = await flow_finalize.store(job, unpacked, deps)
            return await flow_finalize.title_and_finalize(job, stored, deps)

    with pytest.raises(WorkCancelled):
        asyncio.run(cancelled_mid_store())
    assert files_count(migrated_url, work_id) == 0


def test_run_job_turns_a_cancellation_during_store_into_a_cancelled_job(
    migrated_url, endpoint_for, openrouter_server, tmp_path
):
    class CancelsWhileRunning(ScriptedWorker):
        def run(self, job_id, job_input):
            execute(migrated_url, "UPDATE works SET status = 'cancelled' WHERE id = %s", (work_id,))
            return super().run(job_id, job_input)

    endpoint = endpoint_for(CancelsWhileRunning())
    job_id, work_id = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})
    status = asyncio.run(drive(migrated_url, endpoint, openrouter_server, tmp_path, job_id))
    assert status is Outcome.CANCELLED
    job, _ = rows(migrated_url, job_id)
    assert (job["job_status"], job["status"]) == ("cancelled", "cancelled")
    assert job["cancelled_at"] is not None
    assert files_count(migrated_url, work_id) == 0


def garbled_pixels(png: bytes) -> bytes:
    """The PNG with its image data replaced by bytes that do not inflate, every chunk's CRC
    recomputed: signature, header and chunks hold; only the pixels cannot be decoded."""
    out, position = [png[:8]], 8
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        kind, body = png[position + 4 : position + 8], png[position + 8 : position + 8 + length]
        if kind == b"IDAT":
            body = b"\x78\x9c" + bytes(range(7, 250)) * 4
        crc = zlib.crc32(body, zlib.crc32(kind))
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc))
        position += 12 + length
    return b"".join(out)


@pytest.mark.parametrize("backend", ["local", "supabase"])
def test_an_output_whose_pixels_do_not_decode_fails_and_leaves_nothing_stored(
    migrated_url, endpoint_for, openrouter_server, storage_server, tmp_path, backend
):
    """The upload overlaps the output's proof (finalize.store), so an output that fails the
    proof is removed again: here an earlier copy at the work's path, left by an attempt that
    never finalized, goes too, whenever the upload itself lands."""
    bad = base64.b64encode(garbled_pixels(base64.b64decode(png_b64()))).decode()
    worker = ScriptedWorker(output={"image": bad, "prompt_id": "p"})
    job_id, work_id = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})
    user_id = rows(migrated_url, job_id)[0]["user_id"]
    path = output_path(str(user_id), work_id)
    earlier = tmp_path / "storage" / "works" / path
    if backend == "local":
        earlier.parent.mkdir(parents=True)
        earlier.write_bytes(b"an earlier attempt's upload")
        status = asyncio.run(
            drive(migrated_url, endpoint_for(worker), openrouter_server, tmp_path, job_id)
        )
        assert not earlier.exists()
    else:
        storage_server.objects[("works", path)] = StoredObject(b"earlier", "image/png")
        status = drive_with_supabase(
            migrated_url,
            endpoint_for(worker),
            openrouter_server,
            tmp_path,
            job_id,
            storage_server=storage_server,
        )
        assert storage_server.objects == {}
        assert ("DELETE", "/storage/v1/object/works") in storage_server.calls
    assert status is Outcome.FAILED
    job, file = rows(migrated_url, job_id)
    assert (job["job_status"], job["status"], file) == ("failed", "failed", None)
    assert job["error_message"] == "RunPod returned an invalid image"
    assert len(worker.inputs) == 1  # not submitted again


def test_a_proof_that_breaks_unexpectedly_leaves_nothing_stored_either(
    migrated_url, endpoint_for, openrouter_server, tmp_path, monkeypatch
):
    """The inflater under the pixels' proof (ISA-L, ready_png) failing with an error nobody
    planned for: the output is as unproven as a bad one, so its upload is removed again once it
    has ended, and the job is tried again later as after any internal error."""

    class BrokenInflater:
        def decompress(self, *args, **kwargs):
            raise RuntimeError("an inflater bug")

    monkeypatch.setattr(ready_png.isal_zlib, "decompressobj", BrokenInflater)
    worker = ScriptedWorker()
    job_id, work_id = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})
    user_id = rows(migrated_url, job_id)[0]["user_id"]
    stored = tmp_path / "storage" / "works" / output_path(str(user_id), work_id)
    status = asyncio.run(  # the title shown the URL: the proof is ready_png's, not Pillow's
        drive(
            migrated_url,
            endpoint_for(worker),
            openrouter_server,
            tmp_path,
            job_id,
            title_image="url",
        )
    )
    assert status is Outcome.RETRY_LATER
    job, file = rows(migrated_url, job_id)
    assert "RuntimeError" in job["last_error"]
    assert (job["status"], file) == ("processing", None)
    assert not stored.exists()


def test_a_job_stopped_while_its_unproven_upload_ends_still_removes_it(
    migrated_url, endpoint_for, openrouter_server, storage_server, tmp_path
):
    """The proof failed and the upload (slow here) is still going when the job is stopped (the
    user cancelled it, or klein serve is shutting down): the stop waits for the upload to end
    and its image to be removed, rather than leaving the upload to land, unproven, for good."""
    job_id, _ = insert(migrated_url, {"prompt": "make it red", "image_base64": png_b64()})
    bad = base64.b64encode(garbled_pixels(base64.b64decode(png_b64()))).decode()
    storage_server.slow_next(1.0)

    async def stopped_mid_upload():
        async with (
            supabase_on(storage_server) as storage,
            flow_deps(
                migrated_url,
                endpoint_for(ScriptedWorker()),
                openrouter_server,
                tmp_path,
                storage=storage,
            ) as deps,
        ):
            job = await claim(deps, job_id)
            unpacked = await flow_finalize.unpack({"image": bad}, deps)
            storing = asyncio.create_task(flow_finalize.store(job, unpacked, deps))
            async with asyncio.timeout(10):
                while storage_server.writing == 0:  # the upload reached Storage
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # the proof of a 320x240 image has failed by now
            storing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await storing
            return deps.uploads.free == deps.uploads.max_bytes

    assert asyncio.run(stopped_mid_upload())
    time.sleep(1.2)  # past the slow answer: an upload left running would have landed by now
    assert storage_server.objects == {}
    assert ("DELETE", "/storage/v1/object/works") in storage_server.calls
