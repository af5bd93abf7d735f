"""The README's promise on a new machine: `klein serve` with nothing configured runs PostgreSQL
from its wheel, the local RunPod endpoint and the real handler; `klein submit --wait` (also with
nothing configured) finds the same database and follows a job to its end. Only COMFY_API_URL
points at the ComfyUI protocol server, and KLEIN_HOME at the test's own data folder."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from devtools.comfy_standin import scaled_size
from tests.e2e.servekit import REPO_ROOT, SHORT_TIMINGS, KleinServe, base_env, free_port
from tests.e2e.test_home import klein_home  # noqa: F401 - a fixture
from tests.integration import clikit

SAMPLE = REPO_ROOT / "samples" / "portrait.png"
KOREAN_PROMPT = "배경을 해변으로 바꿔줘"
FALLBACK_TITLE = "I2I 작품"
SUBMIT_TIMEOUT_S = 40
IMAGE_URL = re.compile(r"(http://127\.0\.0\.1:\d+/storage/\S+)")


def handler_env() -> dict[str, str]:
    """The environment without any of the host's own handler settings."""
    return {k: v for k, v in base_env().items() if not k.startswith(("COMFY_", "IMAGE_"))}


@pytest.fixture
def nothing_configured(klein_home: Path) -> dict[str, str]:  # noqa: F811
    """No DATABASE_URL, RunPod, OpenRouter or Supabase setting; the data folder the test's own."""
    return handler_env() | {"KLEIN_HOME": str(klein_home), "COMFY_STARTUP_TIMEOUT_S": "2"}


def database_dir(env: dict[str, str]) -> str:
    """Where the embedded PostgreSQL keeps its data: in the data folder."""
    return str(Path(env["KLEIN_HOME"]) / "pgdata")


def klein(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`klein ARGS` as a user types it, in the repository folder, with nothing configured."""
    return clikit.klein(
        *args, database_url=None, cwd=REPO_ROOT, timeout_s=SUBMIT_TIMEOUT_S + 10, env=env
    )


def submit_and_wait(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return klein(
        env, "submit", str(SAMPLE), KOREAN_PROMPT, "--wait", "--timeout", str(SUBMIT_TIMEOUT_S)
    )


def postgres_running_in(data_dir: str) -> bool:
    """Whether any postgres process serves this data folder."""
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "postgres" and data_dir in " ".join(
            process.info["cmdline"] or []
        ):
            return True
    return False


def start_serve(env: dict[str, str], tmp_path: Path, name: str) -> KleinServe:
    klein_serve = KleinServe(name, env | SHORT_TIMINGS, tmp_path / f"{name}.log")
    klein_serve.wait_ready()
    return klein_serve


def test_a_new_machine_runs_a_job_with_nothing_but_a_comfyui(
    nothing_configured, comfy_server, tmp_path
):
    env = nothing_configured | {
        "COMFY_API_URL": comfy_server.url,
        "COMFY_ROOT": str(comfy_server.root),
    }
    klein_serve = start_serve(env, tmp_path, "embedded")
    try:
        done = submit_and_wait(env)
        assert done.returncode == 0, done.stdout + done.stderr + klein_serve.log()
        lines = done.stdout.splitlines()
        assert lines[0].startswith("submitted job ")
        assert lines[-2].split("  ")[1:3] == ["done", repr(FALLBACK_TITLE)]
        stored_at = Path(lines[-1].removeprefix("stored at "))
        assert stored_at.is_relative_to(Path(env["KLEIN_HOME"], "storage")), lines[-1]
        assert "the stand-in, which does not edit" in done.stderr  # said honestly
        assert "no DATABASE_URL" not in done.stderr  # informational logs only with -v

        [url] = IMAGE_URL.findall(lines[-2])
        answer = httpx.get(url, timeout=5)
        assert answer.status_code == 200
        assert answer.content == stored_at.read_bytes()
        stored = Image.open(io.BytesIO(answer.content))
        assert stored.format == "PNG"
        with Image.open(SAMPLE) as sample:
            assert stored.size == scaled_size(*sample.size, megapixels=1.0)

        listing = klein(env, "status")
        assert listing.returncode == 0, listing.stderr
        assert "done" in listing.stdout
        assert [c for c in comfy_server.calls if c == ("POST", "/prompt")] == [("POST", "/prompt")]
    finally:
        klein_serve.stop()
    assert klein_serve.process.returncode == 0, klein_serve.log()
    assert Path(database_dir(env), "PG_VERSION").is_file()
    assert not postgres_running_in(database_dir(env))  # stopped with the last user


def test_without_a_comfyui_the_job_fails_saying_where_it_looked_and_what_to_set(
    nothing_configured, tmp_path
):
    nowhere = f"http://127.0.0.1:{free_port()}"
    env = nothing_configured | {"COMFY_API_URL": nowhere}
    klein_serve = start_serve(env, tmp_path, "no-comfy")
    try:
        done = submit_and_wait(env)
    finally:
        klein_serve.stop()
    assert done.returncode == 1
    expected = (
        f"ComfyUI is not reachable at {nowhere}; start ComfyUI there "
        "or set COMFY_API_URL to a running ComfyUI"
    )
    assert done.stdout.splitlines()[-1].endswith(f"  failed  {expected}"), done.stdout


def test_migrate_with_nothing_configured_prepares_the_embedded_database(nothing_configured):
    first = klein(nothing_configured, "migrate")
    assert first.returncode == 0, first.stderr
    assert "the embedded database in" in first.stdout
    listing = klein(nothing_configured, "status")
    assert (listing.returncode, listing.stdout) == (0, "no jobs yet\n")
    assert "no DATABASE_URL" not in first.stderr + listing.stderr
    verbose = klein(nothing_configured, "status", "-v")
    assert "no DATABASE_URL: using the embedded PostgreSQL" in verbose.stderr
    assert not postgres_running_in(database_dir(nothing_configured))
