"""`klein serve` under the failures nobody planned for, as a real process: the storage folder
replaced by a file, the database backend serving a job terminated mid-flight. Every job still
ends with a written-down outcome while the process lives, and the process keeps serving."""

import shutil
import threading
import time

import httpx
import psycopg

from tests.e2e.servekit import execute, insert_job, wait_for_job

FINISHED = ("completed", "failed", "cancelled")


def finished(row) -> bool:
    return row["status"] in FINISHED


def test_a_storage_folder_that_became_a_file_fails_the_job_and_serve_goes_on(
    serve, migrated_url, tmp_path
):
    klein = serve("e2e-nodir", RETRY_BASE_S="0.1", RETRY_CAP_S="0.3", MAX_RETRIES="2")
    bucket = tmp_path / "storage" / "works"
    shutil.rmtree(bucket, ignore_errors=True)
    bucket.parent.mkdir(parents=True, exist_ok=True)
    bucket.write_text("not a folder")

    job_id, _ = insert_job(migrated_url, "make it red")
    row = wait_for_job(migrated_url, job_id, finished, "the job ends", timeout_s=20)
    assert (row["status"], row["job_status"]) == ("failed", "failed")
    assert row["error_message"] == "Processing failed: internal error (NotADirectoryError)"
    assert row["retries"] == 2

    bucket.unlink()
    job_id, _ = insert_job(migrated_url, "make it blue")
    row = wait_for_job(migrated_url, job_id, finished, "the next job completes")
    assert row["status"] == "completed", row["error_message"]
    assert httpx.get(f"{klein.base_url}/healthz", timeout=5).status_code == 200
    assert "Task exception was never retrieved" not in klein.log()


def test_terminated_database_backends_do_not_strand_a_job(serve, migrated_url, runner):
    """Every backend of `klein serve` is terminated while its job runs: the job still completes
    (resumed at its stage), and nothing is submitted twice."""
    klein = serve("e2e-adminshutdown")
    runner.hold()
    job_id, _ = insert_job(migrated_url, "make it green")
    wait_for_job(migrated_url, job_id, lambda r: r["job_runpod"] is not None, "submitted")

    stop = threading.Event()

    def terminate_backends() -> None:
        while not stop.is_set():
            execute(
                migrated_url,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name <> 'keep'",
            )
            time.sleep(0.3)

    killer = threading.Thread(target=terminate_backends, daemon=True)
    killer.start()
    time.sleep(1.0)
    runner.release()
    time.sleep(1.5)  # the result arrives while connections keep dying
    stop.set()
    killer.join(5)

    row = wait_for_job(migrated_url, job_id, finished, "the job ends after the outage")
    assert row["status"] == "completed", row["error_message"]
    assert runner.calls("make it green") == 1
    with psycopg.connect(migrated_url) as conn:
        held = conn.execute(
            "SELECT count(*) FROM generation_jobs WHERE status = 'taken'"
        ).fetchone()
    assert held == (0,)
    assert httpx.get(f"{klein.base_url}/healthz", timeout=5).status_code == 200
