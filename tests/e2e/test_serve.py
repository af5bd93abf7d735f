"""`klein serve` as a real process: rows inserted as the web app inserts them, webhooks posted as
Supabase posts them, RunPod played by the local endpoint with a scripted worker. Processes are
killed, stopped and replaced mid-job; every assertion is on database rows, stored files, HTTP
answers and the endpoint's own record of what it ran."""

import asyncio
import base64
import signal
import uuid

import httpx

from tests.e2e.servekit import (
    OUTPUT_PNG,
    OUTPUT_SIZE,
    SHORT_TIMINGS,
    execute,
    insert_job,
    job_row,
    runpod_status,
    supabase_webhook,
    wait_for,
    wait_for_job,
)

SECRET = "e2e-webhook-secret"
FALLBACK_TITLE = "I2I 작품"
FINISHED = ("completed", "failed", "cancelled")


def finished(row) -> bool:
    return row["status"] in FINISHED


def submitted(row) -> bool:
    """RunPod accepted the job and the work shows it (the runner may still hold it)."""
    return row["status"] == "processing" and row["job_runpod"] is not None


def post_webhook(klein, job_id, headers=None) -> httpx.Response:
    return httpx.post(
        f"{klein.base_url}/webhook/klein_i2i",
        json=supabase_webhook(job_id),
        headers=headers or {},
        timeout=5,
    )


def test_a_job_completes_and_its_image_is_stored_and_served(serve, migrated_url, tmp_path, runner):
    klein = serve("e2e-a")
    job_id, work_id = insert_job(migrated_url, "make the sky purple")
    assert post_webhook(klein, job_id).status_code == 200

    row = wait_for_job(migrated_url, job_id, finished, "the work finishes")

    assert row["status"] == "completed", row["error_message"]
    assert row["job_status"] == "completed"
    assert row["title"] == FALLBACK_TITLE  # no OPENROUTER_API_KEY: the seed's fallback
    assert row["completed_at"] is not None
    assert row["tags"] == ["I2I", "Image_to_Image", "AI생성"]
    path = f"{row['user_id']}/{work_id}/output.png"
    file = row["file"]
    assert file is not None
    assert (file["bucket_id"], file["path"]) == ("works", path)
    assert (file["width"], file["height"]) == OUTPUT_SIZE
    stored = tmp_path / "storage" / "works" / path
    assert stored.is_file()
    output = row["output_data_json"]
    assert output["image_url"] == f"{klein.base_url}/storage/works/{path}" == file["file_url"]
    assert (output["filename"], output["width"], output["height"]) == ("output.png", *OUTPUT_SIZE)
    served = httpx.get(output["image_url"], timeout=5)
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/png"
    assert served.content == stored.read_bytes()
    assert served.content == base64.b64decode(OUTPUT_PNG)
    assert runner.calls("make the sky purple") == 1
    assert row["attempts"] == 1


def test_duplicate_webhooks_submit_once_and_bad_ones_are_refused(serve, migrated_url, runner):
    klein = serve("e2e-a", WEBHOOK_SECRET=SECRET)
    good = {"X-Webhook-Secret": SECRET}
    job_id, _ = insert_job(migrated_url, "duplicate webhooks")

    async def post_five() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=klein.base_url, timeout=5) as client:
            body = supabase_webhook(job_id)
            return await asyncio.gather(
                *(client.post("/webhook/klein_i2i", json=body, headers=good) for _ in range(5))
            )

    answers = asyncio.run(post_five())
    for answer in answers:
        assert answer.status_code == 200
        body = answer.json()
        assert body["job_id"] == job_id
        # The INSERT's NOTIFY may have claimed it before a webhook arrived.
        assert body["accepted"] is True or body["reason"].startswith("job is ")

    row = wait_for_job(migrated_url, job_id, finished, "the work finishes")
    assert row["status"] == "completed", row["error_message"]
    late = post_webhook(klein, job_id, good)
    assert late.status_code == 200
    assert late.json() == {"job_id": job_id, "accepted": False, "reason": "job is completed"}
    assert runner.calls("duplicate webhooks") == 1
    assert job_row(migrated_url, job_id)["attempts"] == 1

    assert post_webhook(klein, job_id).status_code == 401
    assert post_webhook(klein, job_id, {"X-Webhook-Secret": "wrong"}).status_code == 401
    malformed = httpx.post(
        f"{klein.base_url}/webhook/klein_i2i",
        content=b'{"record": {"id": ',
        headers=good | {"Content-Type": "application/json"},
        timeout=5,
    )
    assert malformed.status_code == 422
    unknown = str(uuid.uuid4())
    answer = post_webhook(klein, unknown, good)
    assert answer.status_code == 200
    assert answer.json() == {"job_id": unknown, "accepted": False, "reason": "unknown job"}


def test_jobs_of_a_killed_process_are_finished_by_another_without_resubmitting(
    serve, migrated_url, runner
):
    runner.hold()
    first = serve("e2e-a")
    prompts = [f"killed mid-run {n}" for n in range(6)]
    job_ids = [insert_job(migrated_url, prompt)[0] for prompt in prompts]
    before = {
        job_id: wait_for_job(migrated_url, job_id, submitted, "submitted by A")["job_runpod"]
        for job_id in job_ids
    }
    wait_for(runner.calls, lambda n: n == 6, "the runner holds all six")

    first.kill()
    second = serve("e2e-b")
    runner.release()

    for job_id in job_ids:
        row = wait_for_job(migrated_url, job_id, finished, "B finishes it", timeout_s=20)
        assert row["status"] == "completed", row["error_message"]
        assert row["locked_by"] == second.worker_id
        assert row["job_runpod"] == before[job_id]
        assert row["attempts"] == 1
    assert [runner.calls(prompt) for prompt in prompts] == [1] * 6
    assert runner.calls() == 6


def test_a_user_cancellation_mid_run_cancels_the_runpod_job(serve, migrated_url, runpod, runner):
    runner.hold()
    serve("e2e-a")
    job_id, work_id = insert_job(migrated_url, "cancel me")
    runpod_id = wait_for_job(migrated_url, job_id, submitted, "submitted")["job_runpod"]
    wait_for(lambda: runner.calls("cancel me"), lambda n: n == 1, "the runner has it")

    execute(migrated_url, "UPDATE works SET status = 'cancelled' WHERE id = %s", (work_id,))

    row = wait_for_job(
        migrated_url, job_id, lambda r: r["job_status"] == "cancelled", "the job is cancelled", 5
    )
    assert row["status"] == "cancelled"
    assert row["cancelled_at"] is not None
    assert row["finished_at"] is not None
    assert runpod_status(runpod, runpod_id) == "CANCELLED"
    assert runner.calls() == 1


def test_sigterm_hands_an_in_flight_job_over_to_the_next_process(serve, migrated_url, runner):
    runner.hold()
    first = serve("e2e-a")
    job_id, _ = insert_job(migrated_url, "sigterm mid-run")
    runpod_id = wait_for_job(migrated_url, job_id, submitted, "submitted")["job_runpod"]
    wait_for(lambda: runner.calls("sigterm mid-run"), lambda n: n == 1, "the runner has it")

    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(float(SHORT_TIMINGS["SHUTDOWN_GRACE_S"]) + 10) == 0

    handed = job_row(migrated_url, job_id)
    assert handed["job_status"] == "taken"
    assert handed["locked_by"] == first.worker_id
    assert handed["lease_over"] is True
    second = serve("e2e-b")
    runner.release()
    row = wait_for_job(migrated_url, job_id, finished, "B finishes it")
    assert row["status"] == "completed", row["error_message"]
    assert row["locked_by"] == second.worker_id
    assert row["job_runpod"] == runpod_id
    assert row["attempts"] == 1
    assert runner.calls() == 1


def test_the_job_timeout_fails_the_work_and_cancels_the_runpod_job(
    serve, migrated_url, runpod, runner
):
    runner.hold()
    serve("e2e-a", JOB_TIMEOUT_S="2")
    job_id, _ = insert_job(migrated_url, "never finishes")

    row = wait_for_job(migrated_url, job_id, finished, "the work finishes")

    assert row["status"] == "failed"
    assert row["error_message"].startswith("Timed out")
    assert row["failed_at"] is not None
    assert row["job_status"] == "failed"
    assert runpod_status(runpod, row["job_runpod"]) == "CANCELLED"
    assert runner.calls() == 1


def test_a_handler_error_fails_the_work_with_its_message(serve, migrated_url, runner):
    runner.errors["no image here"] = "Missing required parameter: image"
    serve("e2e-a")
    job_id, _ = insert_job(migrated_url, "no image here")

    row = wait_for_job(migrated_url, job_id, finished, "the work finishes")

    assert row["status"] == "failed"
    assert row["error_message"] == "Missing required parameter: image"
    assert row["job_status"] == "failed"
    assert row["output_file_id"] is None
    assert runner.calls() == 1
