"""Installed from its wheel, away from the source tree, Klein still has its data: the wheel is
built with `pip wheel .`, installed with its extras into a fresh virtual environment, and run from
an empty folder outside the repository. `klein migrate` applies every file of
supabase/migrations, the handler loads its graph from package data, and the installed
`klein serve` takes a job to `completed` through a local RunPod endpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devtools.endpoint.server import EndpointServer
from tests.e2e.servekit import (
    READY_TIMEOUT_S,
    REPO_ROOT,
    ScriptedRunner,
    base_env,
    free_port,
    insert_job,
    serve_env,
    wait_for,
    wait_for_job,
)

# Building, then installing the extras' dependencies (from pip's cache once warm), takes most of it.
pytestmark = pytest.mark.timeout(420)
EXTRAS = "orchestrator,handler"
BUILD_TIMEOUT_S = 300
RUN_TIMEOUT_S = 60
MIGRATIONS = REPO_ROOT / "supabase" / "migrations"
GRAPHS = REPO_ROOT / "comfy_workflows"
DASHBOARD = REPO_ROOT / "orchestrator" / "dashboard" / "static"
# What the installed handler finds with no COMFY_WORKFLOWS_DIR, and whose code it runs.
LOAD_GRAPH = """
import json, handler, orchestrator
from handler.config import HandlerSettings
from handler.workflow import load_workflow
settings = HandlerSettings()
workflow = load_workflow(settings.comfy_workflow, settings.comfy_workflows_dir)
print(json.dumps({"name": workflow.name, "folder": str(settings.comfy_workflows_dir),
                  "code": [handler.__file__, orchestrator.__file__]}))
"""


@dataclass(frozen=True)
class Installed:
    """The wheel, the virtual environment it is installed in, and an empty folder to run in."""

    wheel: Path
    venv: Path
    workdir: Path

    def command(self, name: str, *args: str) -> list[str]:
        """A console script or python of the installed environment, with its arguments."""
        return [str(self.venv / "bin" / name), *args]

    def run(self, env: dict[str, str], name: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run it in the empty folder; never raises on a non-zero exit."""
        return subprocess.run(
            self.command(name, *args),
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )


def checked(args: list[str], cwd: Path) -> None:
    """Run a build step; fail the test with its output when it fails."""
    done = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")


def away_from_source(env: dict[str, str]) -> dict[str, str]:
    """`env` without what would put the source tree (or this venv) on the path."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    return {key: value for key, value in env.items() if key not in drop}


def installed_env() -> dict[str, str]:
    """No Klein setting, and nothing that would put the source tree on the path."""
    return away_from_source(base_env())


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """`pip wheel . --no-deps`, then a fresh venv with the wheel and its extras (pip's cache)."""
    root = tmp_path_factory.mktemp("wheel")
    dist, venv, workdir = root / "dist", root / "venv", root / "work"
    workdir.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    checked([*pip, "wheel", str(REPO_ROOT), "--no-deps", "-q", "-w", str(dist)], root)
    [wheel] = dist.glob("klein_i2i-*.whl")
    checked([sys.executable, "-m", "venv", str(venv)], root)
    venv_pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    checked([*venv_pip, "install", "-q", f"{wheel}[{EXTRAS}]"], workdir)
    return Installed(wheel, venv, workdir)


def test_the_wheel_carries_every_migration_graph_and_dashboard_file(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    expected_sql = {f"orchestrator/migrations/{p.name}" for p in MIGRATIONS.glob("*.sql")}
    expected_graphs = {f"handler/workflows/{p.name}" for p in GRAPHS.glob("*.json")}
    expected_page = {f"orchestrator/dashboard/static/{p.name}" for p in DASHBOARD.iterdir()}
    assert len(expected_sql) >= 5
    assert {"handler/workflows/flux2_klein_9b_i2i.bindings.json"} <= expected_graphs
    assert {"orchestrator/dashboard/static/index.html"} <= expected_page
    assert expected_sql <= names
    assert expected_graphs <= names
    assert expected_page <= names


def test_installed_klein_migrate_applies_every_migration(installed: Installed, pg_url) -> None:
    done = installed.run(installed_env() | {"DATABASE_URL": pg_url}, "klein", "migrate")
    assert done.returncode == 0, done.stderr
    every = sorted(path.name.split("_", 1)[0] for path in MIGRATIONS.glob("*.sql"))
    assert f"applied {len(every)} migration(s): {', '.join(every)}" in done.stdout
    assert list(installed.workdir.iterdir()) == []


def test_installed_handler_loads_its_graph_from_package_data(installed: Installed) -> None:
    done = installed.run(installed_env(), "python", "-c", LOAD_GRAPH)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    site = installed.venv.resolve()
    assert found["name"] == "flux2_klein_9b_i2i"
    assert Path(found["folder"]).is_relative_to(site)
    assert all(Path(path).resolve().is_relative_to(site) for path in found["code"])

    moved = installed_env() | {"COMFY_WORKFLOWS_DIR": str(GRAPHS), "COMFY_WORKFLOW": "smoke_scale"}
    overridden = installed.run(moved, "python", "-c", LOAD_GRAPH)
    assert overridden.returncode == 0, overridden.stderr
    assert json.loads(overridden.stdout)["folder"] == str(GRAPHS)


def test_installed_klein_serve_takes_a_job_to_completed(
    installed: Installed,
    migrated_url: str,
    runpod: EndpointServer,
    runner: ScriptedRunner,
    tmp_path: Path,
) -> None:
    port = free_port()
    env = away_from_source(serve_env(migrated_url, runpod.api_base, tmp_path / "storage", "wheel"))
    log_path = tmp_path / "klein-serve-wheel.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            installed.command("klein", "serve", "--port", str(port)),
            cwd=installed.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: ready(f"http://127.0.0.1:{port}/readyz", process),
            bool,
            "the installed klein serve is ready",
            READY_TIMEOUT_S,
        )
        job_id, _ = insert_job(migrated_url, "make the sky purple")
        row = wait_for_job(
            migrated_url, job_id, lambda r: r["status"] in {"completed", "failed"}, "the work ends"
        )
        page = httpx.get(f"http://127.0.0.1:{port}/dashboard/app.js", timeout=5)
    finally:
        process.terminate()
        process.wait(10)
    assert row["status"] == "completed", row["error_message"] + log_path.read_text()
    assert runner.calls("make the sky purple") == 1
    stored = tmp_path / "storage" / "works" / str(row["user_id"]) / str(row["id"]) / "output.png"
    assert stored.is_file()
    assert page.status_code == 200  # the dashboard's files come from the installed package
    assert page.content == (DASHBOARD / "app.js").read_bytes()


def ready(url: str, process: subprocess.Popen[bytes]) -> bool:
    """Whether `url` answers 200; a process that died fails the test at once."""
    if process.poll() is not None:
        pytest.fail(f"the installed klein serve exited with {process.returncode}")
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
