"""`klein` given what it did not plan for: a device, a FIFO or a folder where an image file goes,
durations that are not durations, rows written by others (a title with an escape sequence, an
output that is not an object), a reader that leaves, an unplanned exception. Each ends in one
line and an exit code, never a hang, a traceback or a terminal taken over. Subprocesses against
a real database, as in test_cli_behaves.py."""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from orchestrator.__main__ import _run
from tests.integration.clikit import klein

SAMPLE = Path(__file__).parents[2] / "samples" / "portrait.png"
SUBMITTED = re.compile(r"^submitted job (\S+) \(work (\S+)\)$")
ESCAPES = "\x1b]0;owned\x07\x1b[2J\u202e\x9b"  # a window title, a clear screen, bidi, C1 CSI
ESCAPES_SHOWN = r"\x1b]0;owned\x07\x1b[2J\u202e\x9b"


def count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def submitted(url: str) -> tuple[str, str]:
    done = klein("submit", str(SAMPLE), "x", database_url=url)
    assert done.returncode == 0, done.stderr
    found = SUBMITTED.match(done.stdout.strip())
    assert found is not None, done.stdout
    return found[1], found[2]


def ended(url: str, job_id: str, status: str, **work: object) -> None:
    """The job and its work ended with `status`, the work's other columns as given."""
    sets = ", ".join(f"{column} = %({column})s" for column in work)
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE generation_jobs SET status = %(status)s WHERE id = %(job)s",
            {"status": status, "job": job_id},
        )
        conn.execute(
            f"UPDATE works SET status = %(status)s, {sets} "
            "WHERE id = (SELECT work_id FROM generation_jobs WHERE id = %(job)s)",
            {"status": status, "job": job_id, **work},
        )


@pytest.mark.parametrize(
    ("path", "sentence"),
    [
        ("/dev/zero", "/dev/zero: not a regular file; give an image file"),
        ("fifo", "fifo: not a regular file; give an image file"),
        ("folder", "folder: a folder; give an image file"),
    ],
)
def test_submit_refuses_what_is_not_a_regular_file_without_reading_it(
    migrated_url, tmp_path, path, sentence
):
    os.mkfifo(tmp_path / "fifo")  # no writer: opening it to read would wait for ever
    (tmp_path / "folder").mkdir()
    done = klein("submit", path, "x", database_url=migrated_url, cwd=tmp_path, timeout_s=30)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"klein submit: {sentence}\n"
    assert count(migrated_url, "works") == 0


def test_submit_refuses_a_file_over_what_runpod_carries_before_decoding_it(migrated_url, tmp_path):
    (tmp_path / "big.png").write_bytes(SAMPLE.read_bytes() + bytes(7_500_000))
    done = klein("submit", "big.png", "x", database_url=migrated_url, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("klein submit: big.png: Invalid parameter: image_base64 is too")
    assert "send a smaller image or an image_url" in done.stderr
    assert count(migrated_url, "works") == 0


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "1e10", "soon"])
def test_a_wait_that_is_not_a_duration_is_refused_before_any_row(migrated_url, value):
    done = klein("submit", str(SAMPLE), "x", f"--timeout={value}", database_url=migrated_url)
    assert (done.returncode, done.stdout) == (2, "")
    assert "argument --timeout: " in done.stderr
    assert count(migrated_url, "works") == 0


@pytest.mark.parametrize("value", ["nan", "-inf", "-1", "1e10"])
def test_an_age_that_is_not_a_duration_is_refused(migrated_url, value):
    done = klein("jobs", "--stuck", f"--older-than={value}", database_url=migrated_url)
    assert (done.returncode, done.stdout) == (2, "")
    assert "argument --older-than: must be at least 0 and at most 1,000,000,000 s" in done.stderr


def test_status_shows_a_completed_job_whose_output_is_not_an_object(migrated_url):
    job_id, _ = submitted(migrated_url)
    ended(migrated_url, job_id, "completed", output_data_json=psycopg.types.json.Jsonb([1]))
    one = klein("status", job_id, database_url=migrated_url)
    listing = klein("status", database_url=migrated_url)
    assert (one.returncode, one.stderr) == (0, "")
    assert one.stdout.startswith(f"{job_id}  done")
    assert (listing.returncode, listing.stderr) == (0, "")
    assert listing.stdout.startswith(f"{job_id}  done")


def test_what_others_wrote_reaches_the_terminal_escaped(migrated_url):
    done_id, _ = submitted(migrated_url)
    failed_id, _ = submitted(migrated_url)
    ended(migrated_url, done_id, "completed", title=f"cat{ESCAPES}")
    ended(migrated_url, failed_id, "failed", error_message=f"boom{ESCAPES}")
    listing = klein("status", database_url=migrated_url)
    as_json = klein("status", done_id, "--json", database_url=migrated_url)
    for done in (listing, as_json):
        assert done.returncode == 0, done.stderr
        assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]", done.stdout), done.stdout
    assert f"{failed_id}  failed  boom{ESCAPES_SHOWN}\n" in listing.stdout
    assert f"{done_id}  done  'cat{ESCAPES_SHOWN}'" in listing.stdout
    assert '"title": "cat\\u001b]0;owned\\u0007\\u001b[2J\\u202e\\u009b"' in as_json.stdout


def test_a_reader_that_leaves_ends_the_command_quietly(migrated_url):
    submitted(migrated_url)
    env = {**os.environ, "DATABASE_URL": migrated_url}
    command = [sys.executable, "-m", "orchestrator", "status"]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as run:
        run.stdout.close()  # before klein writes a line
        stderr = run.stderr.read()
        assert run.wait(timeout=50) == 141  # as a shell shows a command SIGPIPE ended
    assert stderr == b""


def test_an_unplanned_exception_is_one_line_and_exit_1(capsys):
    def broken(args: argparse.Namespace, settings: object) -> int:
        raise RuntimeError("a bug's message, not for the terminal")

    args = argparse.Namespace(command="broken", run=broken)
    assert _run(args) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", "klein broken: internal error (RuntimeError); -v shows where\n")


@pytest.mark.parametrize(
    ("setting", "sentence"),
    [
        ("KLEIN_PORT=99999", "KLEIN_PORT: Input should be less than or equal to 65535"),
        ("LEASE_S=inf", "LEASE_S: Input should be a finite number"),
        ("JOB_TIMEOUT_S=1e12", "JOB_TIMEOUT_S: must be at most 1,000,000,000 seconds"),
    ],
)
def test_a_setting_no_service_could_use_is_one_line_and_exit_2(migrated_url, setting, sentence):
    name, value = setting.split("=")
    done = klein("serve", database_url=migrated_url, env={**os.environ, name: value})
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"klein serve: bad configuration: {sentence}\n"
