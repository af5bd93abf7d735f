"""`klein submit` and `klein status` as a user runs them, against a real database."""

import base64
import re
import uuid

import psycopg
from PIL import Image
from psycopg.rows import dict_row

from orchestrator import console
from orchestrator.settings import KLEIN_TEMPLATE_ID
from tests.integration.clikit import klein

SUBMITTED = re.compile(r"^submitted job (\S+) \(work (\S+)\)$", re.MULTILINE)


def submitted(done) -> tuple[str, str]:
    """(job_id, work_id) from submit's first line."""
    assert done.returncode == 0, done.stderr
    match = SUBMITTED.search(done.stdout)
    assert match, done.stdout
    return match[1], match[2]


def job_and_work(url, job_id) -> tuple[dict, dict]:
    with psycopg.connect(url) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM generation_jobs WHERE id = %s", (job_id,))
        job = cur.fetchone()
        cur.execute("SELECT * FROM works WHERE id = %s", (job["work_id"],))
        return job, cur.fetchone()


def url_request(image: str) -> console.SubmitRequest:
    return console.SubmitRequest(
        image=image, prompt="p", user_id=str(uuid.uuid4()), template_id=KLEIN_TEMPLATE_ID
    )


def count(url, table) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_submit_from_a_file_creates_the_rows_the_web_app_would(migrated_url, tmp_path):
    Image.new("RGB", (16, 12), (200, 30, 30)).save(tmp_path / "photo.png")
    user_id = str(uuid.uuid4())
    done = klein(
        "submit",
        "photo.png",
        "배경을 해변으로 바꿔줘",
        "--steps",
        "6",
        "--seed",
        "42",
        "--priority",
        "5",
        "--user-id",
        user_id,
        database_url=migrated_url,
        cwd=tmp_path,
    )
    job_id, work_id = submitted(done)
    job, work = job_and_work(migrated_url, job_id)
    assert (str(job["work_id"]), job["status"], job["priority"]) == (work_id, "pending", 5)
    assert (str(work["user_id"]), str(work["template_id"]), work["status"]) == (
        user_id,
        KLEIN_TEMPLATE_ID,
        "pending",
    )
    assert work["input_data"] == {
        "prompt": "배경을 해변으로 바꿔줘",
        "steps": 6,
        "seed": 42,
        "image_base64": base64.b64encode((tmp_path / "photo.png").read_bytes()).decode(),
    }


def test_submit_with_a_url_sends_it_as_image_url(migrated_url):
    done = klein("submit", "https://example.com/cat.png", "make it red", database_url=migrated_url)
    job_id, _ = submitted(done)
    job, work = job_and_work(migrated_url, job_id)
    assert work["input_data"] == {
        "prompt": "make it red",
        "image_url": "https://example.com/cat.png",
    }
    assert (job["status"], job["priority"]) == ("pending", 0)


def test_status_finds_a_job_by_its_id_or_its_works_and_lists_recent_ones(migrated_url):
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        first, _ = console.submit(conn, url_request("https://e.com/1.png"))
        job_id, work_id = console.submit(conn, url_request("https://e.com/2.png"))
    for key in (job_id, work_id):
        done = klein("status", key, database_url=migrated_url)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"{job_id}  queued\n"
    listing = klein("status", database_url=migrated_url)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines() == [f"{job_id}  queued", f"{first}  queued"]


def test_status_lists_a_completed_job_with_its_title_and_image_url(migrated_url):
    url = "http://127.0.0.1:8080/storage/works/u/w/output.png"
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        job_id, work_id = console.submit(conn, url_request("https://e.com/1.png"))
        conn.execute(
            "UPDATE works SET status = 'completed', title = '해변', output_data_json = %s"
            " WHERE id = %s",
            (psycopg.types.json.Jsonb({"image_url": url}), work_id),
        )
        conn.execute("UPDATE generation_jobs SET status = 'completed' WHERE id = %s", (job_id,))
    expected = f"{job_id}  done  '해변'  {url}"
    listing = klein("status", database_url=migrated_url)
    assert listing.stdout.splitlines() == [expected]
    one = klein("status", job_id, database_url=migrated_url)
    assert one.stdout.splitlines() == [expected]


def test_status_of_something_that_is_not_an_id_is_a_usage_error(migrated_url):
    done = klein("status", "not-a-uuid", database_url=migrated_url)
    assert done.returncode == 2
    assert done.stderr == "klein status: not a job or work id: not-a-uuid\n"


def test_status_of_an_unknown_id_says_so(migrated_url):
    unknown = str(uuid.uuid4())
    done = klein("status", unknown, database_url=migrated_url)
    assert done.returncode == 1
    assert done.stderr == f"klein status: no job or work {unknown}\n"


def test_submit_wait_gives_up_after_its_timeout(migrated_url):
    done = klein(
        "submit",
        "https://e.com/1.png",
        "nobody runs this",
        "--wait",
        "--timeout",
        "1",
        database_url=migrated_url,
    )
    assert done.returncode == 1
    job_id = SUBMITTED.search(done.stdout)[1]
    assert f"{job_id}  queued" in done.stdout.splitlines()
    assert done.stderr == f"klein submit: job {job_id} did not finish within 1 s\n"


def test_submit_with_a_missing_image_file_is_one_line_and_creates_nothing(migrated_url, tmp_path):
    done = klein("submit", "missing.png", "x", database_url=migrated_url, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == "klein submit: missing.png: no such file\n"
    assert (count(migrated_url, "works"), count(migrated_url, "generation_jobs")) == (0, 0)


def test_submit_of_a_file_that_is_not_an_image_is_refused_before_any_row(migrated_url, tmp_path):
    (tmp_path / "notes.txt").write_text("not a picture")
    done = klein("submit", "notes.txt", "x", database_url=migrated_url, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        "klein submit: notes.txt: Invalid parameter: image is not a readable image\n"
    )
    assert (count(migrated_url, "works"), count(migrated_url, "generation_jobs")) == (0, 0)
