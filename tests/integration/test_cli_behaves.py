"""`klein` as a new user meets it: parameters refused before any row, a busy port in one sentence,
Ctrl-C while following, the live progress lines, `--output`, and `--help` that explains.
Subprocesses against a real database; the job's progress is written to the rows by the test,
as the orchestrator would."""

import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
from PIL import Image, ImageDraw
from psycopg.types.json import Jsonb

from tests.integration.clikit import klein

SUBMITTED = re.compile(r"^submitted job (\S+) \(work (\S+)\)$")


def count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.mark.parametrize(
    ("options", "sentence"),
    [
        (["--megapixels", "9"], "Invalid parameter: megapixels must be between 0.5 and 2.0"),
        (["--cfg", "-3"], "Invalid parameter: cfg must be between 0 and 20"),
        (["--steps", "41"], "Invalid parameter: steps must be between 1 and 40"),
        (["--cfg", "nan"], "Invalid parameter: cfg must be a finite number"),
    ],
)
def test_submit_refuses_a_parameter_out_of_range_before_any_row(migrated_url, options, sentence):
    done = klein("submit", "https://e.com/cat.png", "x", *options, database_url=migrated_url)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"klein submit: {sentence}\n"
    assert (count(migrated_url, "works"), count(migrated_url, "generation_jobs")) == (0, 0)


def test_submit_says_an_empty_file_is_empty_and_a_blank_prompt_is_missing(migrated_url, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    empty = klein("submit", "empty.png", "x", database_url=migrated_url, cwd=tmp_path)
    assert (empty.returncode, empty.stderr) == (2, "klein submit: empty.png: the file is empty\n")
    blank = klein("submit", "https://e.com/cat.png", "   ", database_url=migrated_url)
    assert (blank.returncode, blank.stderr) == (
        2,
        "klein submit: Missing required parameter: prompt\n",
    )
    assert count(migrated_url, "works") == 0


def test_serve_on_a_busy_port_is_one_sentence_and_exit_2(migrated_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = klein("serve", "--port", str(port), database_url=migrated_url)
    assert done.returncode == 2
    assert done.stderr == (
        f"klein serve: port {port} on 127.0.0.1 is already in use: stop what listens there "
        "or choose another port with --port (or KLEIN_PORT)\n"
    )


def follower(args: list[str], url: str, home: Path, cwd: Path) -> subprocess.Popen[str]:
    """`klein submit ... --wait` running, its output read line by line as it comes."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KLEIN_HOME")}
    env |= {"DATABASE_URL": url, "KLEIN_HOME": str(home), "STORAGE_BACKEND": "local"}
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "submit", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ctrl_c_while_following_says_the_job_goes_on_and_how_to_cancel_it(migrated_url, tmp_path):
    process = follower(["https://e.com/cat.png", "x", "--wait"], migrated_url, tmp_path, tmp_path)
    try:
        job_id = SUBMITTED.match(process.stdout.readline().strip())[1]
        assert process.stdout.readline() == f"{job_id}  queued\n"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130
    assert err == (
        f"stopped following; job {job_id} goes on: `klein status {job_id}` shows it, "
        f"`klein cancel {job_id}` stops it\n"
    )
    with psycopg.connect(migrated_url) as conn:
        status = conn.execute("SELECT status FROM generation_jobs WHERE id = %s", (job_id,))
        assert status.fetchone()[0] == "pending"


def progress(stage: str, step: int | None, steps: int | None) -> Jsonb:
    return Jsonb(
        {"stage": stage, "node": None, "step": step, "steps": steps, "at": "2026-12-03T06:40Z"}
    )


def move(url: str, job_id: str, work_id: str, status: str, state: Jsonb | None) -> None:
    """What the orchestrator writes as the job goes (the test plays it)."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("UPDATE generation_jobs SET status = 'taken' WHERE id = %s", (job_id,))
        conn.execute(
            "UPDATE works SET status = %s, progress = %s WHERE id = %s", (status, state, work_id)
        )


def complete(url: str, job_id: str, work_id: str, image_url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("UPDATE generation_jobs SET status = 'completed' WHERE id = %s", (job_id,))
        conn.execute(
            "UPDATE works SET status = 'completed', title = '해변', progress = NULL,"
            " output_data_json = %s WHERE id = %s",
            (Jsonb({"image_url": image_url}), work_id),
        )


def drawing() -> Image.Image:
    image = Image.new("RGB", (64, 48), (240, 240, 230))
    ImageDraw.Draw(image).ellipse((10, 8, 50, 40), fill=(200, 40, 40))
    return image


def test_wait_prints_each_progress_step_then_saves_the_output_and_says_it_was_not_edited(
    migrated_url, tmp_path
):
    drawing().save(tmp_path / "in.png")
    args = ["in.png", "x", "-o", "out.png", "--timeout", "120"]
    process = follower(args, migrated_url, tmp_path / "home", tmp_path)
    try:
        job_id, work_id = SUBMITTED.match(process.stdout.readline().strip()).groups()
        assert process.stdout.readline() == f"{job_id}  queued\n"
        move(migrated_url, job_id, work_id, "processing", progress("queued on RunPod", None, None))
        assert process.stdout.readline() == f"{job_id}  generating...  queued on RunPod\n"
        for step in (1, 2):
            move(migrated_url, job_id, work_id, "processing", progress("sampling", step, 4))
            bar = "#" * (5 * step) + "-" * (20 - 5 * step)
            expected = f"{job_id}  generating...  sampling  [{bar}] {step}/4\n"
            assert process.stdout.readline() == expected
        stored = tmp_path / "home" / "storage" / "works" / "u" / work_id / "output.png"
        stored.parent.mkdir(parents=True)
        drawing().resize((128, 96)).save(stored)  # what the ComfyUI stand-in makes of it
        url = f"http://127.0.0.1:9/storage/works/u/{work_id}/output.png"
        complete(migrated_url, job_id, work_id, url)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert out.splitlines() == [
        f"{job_id}  done  '해변'  {url}",
        f"stored at {stored.resolve()}",
        f"saved {(tmp_path / 'out.png').resolve()}",
    ]
    assert (tmp_path / "out.png").read_bytes() == stored.read_bytes()
    assert "the ComfyUI at COMFY_API_URL is the stand-in, which does not edit" in err


def test_output_into_a_missing_folder_is_refused_before_any_row(migrated_url, tmp_path):
    done = klein(
        "submit", "https://e.com/c.png", "x", "-o", "nowhere/out.png", database_url=migrated_url
    )
    assert done.returncode == 2
    assert done.stderr == (
        "klein submit: --output nowhere/out.png: the folder nowhere does not exist\n"
    )
    assert count(migrated_url, "works") == 0


def test_help_gives_each_option_its_meaning_range_and_default():
    submit = klein("submit", "--help", database_url=None).stdout
    for text in (
        "sampling steps, 1..40 (default 4)",
        "guidance scale, 0..20 (default 1)",
        "0.5..2.0",
        "-1000..1000 (default 0)",
        "(default 900)",
        "a random seed",
        "Korean is translated to English when OPENROUTER_API_KEY is set",
    ):
        assert text in " ".join(submit.split()), text
    top = " ".join(klein("--help", database_url=None).stdout.split())
    for text in ("migrate apply supabase/migrations", "status one job", "endpoint DEVELOPMENT"):
        assert text in top, text


def test_a_wrong_id_shape_still_names_what_was_expected(migrated_url):
    done = klein("cancel", str(uuid.uuid4()), database_url=migrated_url)
    assert done.returncode == 1
    assert done.stderr.startswith("klein cancel: no job or work ")


def read_until(fd: int, text: str, seen: bytearray, limit_s: float = 60) -> None:
    """Read the terminal's output until `text` appears (the limit only guards a hang)."""
    while text.encode() not in seen:
        ready, _, _ = select.select([fd], [], [], limit_s)
        assert ready, f"no {text!r} on the terminal; so far {bytes(seen)!r}"
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the process closed the terminal
            chunk = b""
        assert chunk, f"the terminal closed before {text!r}; it showed {bytes(seen)!r}"
        seen += chunk


def test_on_a_terminal_the_progress_is_one_line_redrawn_in_place(migrated_url, tmp_path):
    main, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {
        "DATABASE_URL": migrated_url
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "submit", "https://e.com/c.png", "x", "--wait"],
        env=env,
        stdout=terminal,
        stderr=subprocess.PIPE,
    )
    os.close(terminal)
    seen = bytearray()
    try:
        read_until(main, "queued", seen)
        job_id, work_id = SUBMITTED.match(seen.decode().splitlines()[0].strip()).groups()
        move(migrated_url, job_id, work_id, "processing", progress("sampling", 3, 4))
        read_until(main, "3/4", seen)
        complete(migrated_url, job_id, work_id, "https://cdn.example/out.png")
        read_until(main, "out.png", seen)
        process.wait(timeout=30)
        err = process.stderr.read().decode()
    finally:
        process.kill()
        process.stderr.close()
        os.close(main)
    assert (process.returncode, err) == (0, "")
    followed = seen.decode().split("\r\n", 1)[1]  # after the "submitted" line
    assert followed.count("\r\x1b[K") == 3  # queued, sampling 3/4, done: redrawn in place
    assert "\n" not in followed.rstrip("\r\n")  # one line, left standing at the end
    assert followed.rsplit("\r\x1b[K", 1)[1].startswith(f"{job_id}  done  '해변'")


def test_serve_on_port_0_listens_on_a_free_port_says_which_and_stops_on_ctrl_c(migrated_url):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {
        "DATABASE_URL": migrated_url,
        "RUNPOD_ENDPOINT_ID": "x",
        "RUNPOD_API_BASE": "http://127.0.0.1:9/v2",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "serve", "--port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        serving = None
        while serving is None:
            line = process.stderr.readline()
            assert line, "klein serve ended before serving"
            serving = re.search(r"serving on http://127\.0\.0\.1:(\d+) ", line)
        port = int(serving[1])
        assert port != 0
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0
    assert "Traceback" not in rest


def test_a_result_that_cannot_be_downloaded_fails_in_one_line(migrated_url, tmp_path):
    args = ["https://e.com/c.png", "x", "-o", "out.png"]
    process = follower(args, migrated_url, tmp_path / "home", tmp_path)
    try:
        job_id, work_id = SUBMITTED.match(process.stdout.readline().strip()).groups()
        assert process.stdout.readline() == f"{job_id}  queued\n"
        complete(migrated_url, job_id, work_id, "http://127.0.0.1:9/nothing-listens.png")
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 1
    assert out.splitlines()[-1].startswith(f"{job_id}  done")
    assert err.startswith(
        "klein submit: cannot download the result from http://127.0.0.1:9/nothing-listens.png: "
    )
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out.png").exists()
