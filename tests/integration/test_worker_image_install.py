"""The handler's install step of Dockerfile.worker, run for real: the files the Dockerfile copies
before it go into an empty folder, a clean virtual environment gets the pinned pip, and the
Dockerfile's own `pip install` command runs there; the handler must then import.

The image's Python is python3.12 (Ubuntu 24.04); it is used when one runs here (on PATH or
under pyenv), otherwise the interpreter running the tests (python3.11) stands in for it.
Needs PyPI (or pip's cache) for the handler extra's dependencies."""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile.worker"


def image_python() -> str:
    """A python3.12 that runs here (on PATH or under pyenv), else the one running the tests."""
    pyenv = Path.home() / ".pyenv" / "versions"
    candidates = [shutil.which("python3.12"), *map(str, sorted(pyenv.glob("3.12*/bin/python3.12")))]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", ""], capture_output=True, check=False).returncode == 0:
            return candidate
    return sys.executable


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of Dockerfile.worker, comments dropped, continuations joined."""
    text = "\n".join(
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    logical = text.replace("\\\n", " ").splitlines()
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.strip().partition(" ") for line in logical if line.strip())
    ]


def handler_install() -> tuple[list[str], str]:
    """The COPY sources before the RUN that installs the handler extra, and that RUN's command."""
    sources: list[str] = []
    for word, rest in instructions():
        if word == "COPY":
            parts = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
            sources += [p for p in parts[:-1] if not p.startswith("--")]
        elif word == "RUN" and "[handler]" in rest:
            return sources, rest
    raise AssertionError("Dockerfile.worker installs no [handler] extra")


def pip_version() -> str:
    """The pip the Dockerfile pins for its virtual environments."""
    args = [rest for word, rest in instructions() if word == "ARG"]
    return next(a.partition("=")[2] for a in args if a.startswith("PIP_VERSION="))


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run one step; its output becomes the failure message."""
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=540, check=False
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.timeout(600)
def test_handler_extra_installs_and_imports_in_a_clean_venv(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    sources, install = handler_install()
    for source in sources:
        target = app / source
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / source, target)
    venv = tmp_path / "handler-venv"
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    run([image_python(), "-m", "venv", str(venv)], app, env)
    run(["pip", "install", "--quiet", f"pip=={pip_version()}"], app, env)
    run(["/bin/sh", "-c", install], app, env)
    python = str(venv / "bin" / "python")
    outside = tmp_path / "elsewhere"  # not /app, so only the installed package can be imported
    outside.mkdir()
    run([python, "-c", "import handler.worker, handler.__main__"], outside, env)
    leaked = run(
        [python, "-c", "import importlib.util as u; print([m for m in "
         "('psycopg', 'openai', 'orchestrator', 'docker') if u.find_spec(m)])"],
        outside,
        env,
    )  # fmt: skip
    assert leaked.strip() == "[]", "the handler extra pulls in the orchestrator's packages"
