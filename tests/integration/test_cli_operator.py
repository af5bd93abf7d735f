"""`klein cancel`, `klein retry`, `klein jobs --stuck` and id prefixes as an operator runs them:
subprocesses against a real database, and RunPod's `/cancel` answered by a local HTTP server."""

import json
import re
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest
from psycopg.rows import dict_row

from orchestrator import console
from orchestrator.settings import KLEIN_TEMPLATE_ID
from tests.integration.clikit import klein
from tests.integration.lockkit import await_a_lock_waiter, job_row_locked, work_row_free


def new_job(url: str, job_id: str | None = None, work_id: str | None = None) -> tuple[str, str]:
    """A pending work and job, as the web app writes them (ids chosen when given)."""
    job_id, work_id = job_id or str(uuid.uuid4()), work_id or str(uuid.uuid4())
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO works (id, user_id, template_id, input_data, status)"
            " VALUES (%s, %s, %s, '{\"prompt\": \"p\"}', 'pending')",
            (work_id, str(uuid.uuid4()), KLEIN_TEMPLATE_ID),
        )
        conn.execute(
            "INSERT INTO generation_jobs (id, work_id, status, priority)"
            " VALUES (%s, %s, 'pending', 7)",
            (job_id, work_id),
        )
    return job_id, work_id


def execute(url: str, sql: str, *params) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql, params)


def rows(url: str, sql: str, *params) -> list[dict]:
    with psycopg.connect(url) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def statuses(url: str, work_id: str) -> tuple[str, list[str]]:
    work = rows(url, "SELECT status FROM works WHERE id = %s", work_id)[0]["status"]
    jobs = rows(
        url, "SELECT status FROM generation_jobs WHERE work_id = %s ORDER BY created_at", work_id
    )
    return work, [job["status"] for job in jobs]


class RunPodCancels(BaseHTTPRequestHandler):
    """RunPod's `POST /v2/<endpoint>/cancel/<id>`, recording each call."""

    calls: list[tuple[str, str | None]]

    def do_POST(self) -> None:
        self.server.calls.append((self.path, self.headers.get("Authorization")))  # type: ignore[attr-defined]
        body = json.dumps({"id": self.path.rsplit("/", 1)[-1], "status": "CANCELLED"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def runpod() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), RunPodCancels)
    server.calls = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def runpod_env(server: ThreadingHTTPServer) -> dict[str, str]:
    import os

    return dict(os.environ) | {
        "RUNPOD_API_BASE": f"http://127.0.0.1:{server.server_port}/v2",
        "RUNPOD_ENDPOINT_ID": "ep1",
        "RUNPOD_API_KEY": "rp-key",
    }


def test_status_with_no_jobs_says_so(migrated_url):
    done = klein("status", database_url=migrated_url)
    assert (done.returncode, done.stdout, done.stderr) == (0, "no jobs yet\n", "")


def test_status_takes_a_short_job_or_work_id(migrated_url):
    job_id, work_id = new_job(migrated_url)
    for short in (job_id[:8], work_id[:8].upper()):
        done = klein("status", short, database_url=migrated_url)
        assert (done.returncode, done.stdout) == (0, f"{job_id}  queued\n"), done.stderr


def test_an_ambiguous_prefix_is_a_usage_error_saying_how_many(migrated_url):
    new_job(migrated_url, job_id="abcd0000-0000-4000-8000-000000000001")
    new_job(migrated_url, work_id="abcd0000-0000-4000-8000-000000000002")
    done = klein("status", "abcd", database_url=migrated_url)
    assert done.returncode == 2
    assert done.stderr == (
        "klein status: abcd is ambiguous: it starts 2 jobs or works; give more of the id\n"
    )


def test_cancel_of_a_pending_job_ends_both_rows_in_one_line(migrated_url):
    job_id, work_id = new_job(migrated_url)
    done = klein("cancel", job_id[:8], database_url=migrated_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"cancelled work {work_id} and its job {job_id}\n"
    assert statuses(migrated_url, work_id) == ("cancelled", ["cancelled"])


def test_cancel_of_a_submitted_job_nobody_holds_cancels_it_on_runpod(migrated_url, runpod):
    job_id, work_id = new_job(migrated_url)
    execute(
        migrated_url,
        "UPDATE generation_jobs SET status = 'taken', locked_by = 'dead-host',"
        " runpod_job_id = 'rp-9', lease_expires_at = now() - interval '1 minute' WHERE id = %s",
        job_id,
    )
    execute(migrated_url, "UPDATE works SET status = 'processing' WHERE id = %s", work_id)
    done = klein("cancel", work_id, database_url=migrated_url, env=runpod_env(runpod))
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"cancelled work {work_id} and its job {job_id}; RunPod job rp-9 cancelled\n"
    )
    assert runpod.calls == [("/v2/ep1/cancel/rp-9", "Bearer rp-key")]
    assert statuses(migrated_url, work_id) == ("cancelled", ["cancelled"])


def test_cancel_leaves_a_job_a_live_process_holds_to_that_process(migrated_url, runpod):
    job_id, work_id = new_job(migrated_url)
    execute(
        migrated_url,
        "UPDATE generation_jobs SET status = 'taken', locked_by = 'host-2', runpod_job_id = 'rp-3',"
        " lease_expires_at = now() + interval '1 minute' WHERE id = %s",
        job_id,
    )
    done = klein("cancel", job_id, database_url=migrated_url, env=runpod_env(runpod))
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"cancelled work {work_id}; host-2, which holds job {job_id}, stops it within seconds;"
        " RunPod job rp-3 cancelled\n"
    )
    assert statuses(migrated_url, work_id) == ("cancelled", ["taken"])
    assert runpod.calls == [("/v2/ep1/cancel/rp-3", "Bearer rp-key")]


def test_cancel_locks_the_job_row_before_the_work_row(migrated_url):
    """`klein cancel` takes the job's row before the work's, in the order of the claim and of
    every write of the flow, so that it never deadlocks with the job's holder ending the job:
    while the job's row is held, it waits without holding the work's row, then cancels both."""
    job_id, work_id = new_job(migrated_url)
    done: list[subprocess.CompletedProcess] = []
    with job_row_locked(migrated_url, job_id):
        cancelling = threading.Thread(
            target=lambda: done.append(klein("cancel", job_id, database_url=migrated_url))
        )
        cancelling.start()
        await_a_lock_waiter(migrated_url)
        free = work_row_free(migrated_url, work_id)
    cancelling.join(timeout=60)
    assert free is True
    assert done[0].returncode == 0, done[0].stderr
    assert done[0].stdout == f"cancelled work {work_id} and its job {job_id}\n"
    assert statuses(migrated_url, work_id) == ("cancelled", ["cancelled"])


def test_cancel_sees_a_runpod_job_recorded_while_it_waited_for_the_row(migrated_url, runpod):
    """The job's holder records its RunPod id, then dies, while `klein cancel` waits for the
    job's row: the cancel ends the job and cancels that RunPod job, not one it read before."""
    job_id, work_id = new_job(migrated_url)
    done: list[subprocess.CompletedProcess] = []
    with psycopg.connect(migrated_url) as holder:
        holder.execute(
            "UPDATE generation_jobs SET status = 'taken', locked_by = 'dead-host',"
            " runpod_job_id = 'rp-late', lease_expires_at = now() - interval '1 s' WHERE id = %s",
            (job_id,),
        )
        cancelling = threading.Thread(
            target=lambda: done.append(
                klein("cancel", job_id, database_url=migrated_url, env=runpod_env(runpod))
            )
        )
        cancelling.start()
        await_a_lock_waiter(migrated_url)
        holder.execute("UPDATE works SET status = 'processing' WHERE id = %s", (work_id,))
        holder.commit()
    cancelling.join(timeout=60)
    assert done[0].returncode == 0, done[0].stderr
    assert done[0].stdout == (
        f"cancelled work {work_id} and its job {job_id}; RunPod job rp-late cancelled\n"
    )
    assert runpod.calls == [("/v2/ep1/cancel/rp-late", "Bearer rp-key")]
    assert statuses(migrated_url, work_id) == ("cancelled", ["cancelled"])


def test_cancel_of_a_completed_work_changes_nothing_and_fails(migrated_url):
    job_id, work_id = new_job(migrated_url)
    execute(migrated_url, "UPDATE works SET status = 'completed' WHERE id = %s", work_id)
    done = klein("cancel", job_id, database_url=migrated_url)
    assert done.returncode == 1
    assert done.stderr == f"klein cancel: work {work_id} is completed: there is nothing to cancel\n"
    assert statuses(migrated_url, work_id) == ("completed", ["pending"])


def test_retry_gives_a_failed_work_a_new_pending_job_with_the_same_priority(migrated_url):
    job_id, work_id = new_job(migrated_url)
    execute(
        migrated_url,
        "UPDATE works SET status = 'failed', error_message = 'boom', failed_at = now()"
        " WHERE id = %s",
        work_id,
    )
    execute(migrated_url, "UPDATE generation_jobs SET status = 'failed' WHERE id = %s", job_id)
    done = klein("retry", work_id[:10], database_url=migrated_url)
    assert done.returncode == 0, done.stderr
    [new] = rows(
        migrated_url,
        "SELECT id::text, status, priority FROM generation_jobs WHERE work_id = %s AND id <> %s",
        work_id,
        job_id,
    )
    assert done.stdout == f"work {work_id} is pending again, as job {new['id']}\n"
    assert (new["status"], new["priority"]) == ("pending", 7)
    [work] = rows(migrated_url, "SELECT status, error_message FROM works WHERE id = %s", work_id)
    assert (work["status"], work["error_message"]) == ("pending", None)
    with psycopg.connect(migrated_url) as conn:
        assert str(console.job_status(conn, work_id)["job_id"]) == new["id"]
    listed = klein("status", database_url=migrated_url).stdout.splitlines()
    # The old job shows its own end, not its successor's state.
    assert listed == [
        f"{new['id']}  queued",
        f"{job_id}  failed  (work {work_id} was retried; it is pending)",
    ]


def test_retry_of_a_work_still_running_is_refused(migrated_url):
    _, work_id = new_job(migrated_url)
    done = klein("retry", work_id, database_url=migrated_url)
    assert done.returncode == 2
    assert done.stderr == (
        f"klein retry: work {work_id} is pending: only a failed or cancelled work is retried "
        "(`klein cancel` it first)\n"
    )
    assert statuses(migrated_url, work_id) == ("pending", ["pending"])


def test_jobs_stuck_lists_each_kind_with_its_reason_and_not_a_fresh_job(migrated_url):
    n8n, _ = new_job(migrated_url)
    execute(migrated_url, "UPDATE generation_jobs SET status = 'taken' WHERE id = %s", n8n)
    dead, _ = new_job(migrated_url)
    execute(
        migrated_url,
        "UPDATE generation_jobs SET status = 'taken', locked_by = 'gone',"
        " lease_expires_at = now() - interval '5 minutes' WHERE id = %s",
        dead,
    )
    operator, _ = new_job(migrated_url)
    execute(
        migrated_url,
        "UPDATE generation_jobs SET last_error = %s, not_before = now() + interval '30 s'"
        " WHERE id = %s",
        "RunPod refused the API key (HTTP 401); check RUNPOD_API_KEY",
        operator,
    )
    old, _ = new_job(migrated_url)
    execute(
        migrated_url,
        "UPDATE generation_jobs SET created_at = now() - interval '2 hours' WHERE id = %s",
        old,
    )
    new_job(migrated_url)  # fresh and pending: not stuck
    done = klein("jobs", "--stuck", "--older-than", "3600", database_url=migrated_url)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split("  ", 1) for line in done.stdout.splitlines())
    assert re.match(r"pending  pending for 72\d\d s \(older than 3600 s\)$", lines[old])
    assert lines[n8n].startswith("taken  taken with no lease (a row the n8n workflow left)")
    assert re.match(r"taken  leased by gone, whose lease expired 3\d\d s ago", lines[dead])
    assert lines[operator] == (
        "pending  waiting for an operator: RunPod refused the API key (HTTP 401); "
        "check RUNPOD_API_KEY"
    )
    assert next(iter(lines)) == old
    assert len(lines) == 4


def test_jobs_stuck_with_nothing_stuck_says_so(migrated_url):
    new_job(migrated_url)
    done = klein("jobs", "--stuck", database_url=migrated_url)
    assert (done.returncode, done.stdout.startswith("no stuck jobs")) == (0, True), done.stderr
