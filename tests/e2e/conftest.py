"""End-to-end fixtures: `klein serve` as a real subprocess over a fresh, migrated database, and the
local RunPod endpoint (in this process) with a scripted runner. A failing test's report carries
every `klein serve` log it started."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.endpoint.config import EndpointConfig
from orchestrator.endpoint.server import EndpointServer
from tests.e2e.servekit import SHORT_TIMINGS, KleinServe, ScriptedRunner, base_env
from tests.integration.conftest import migrated_url, pg_server, pg_url  # noqa: F401

PROCESSES = pytest.StashKey[list[KleinServe]]()


@pytest.fixture
def runner() -> Iterator[ScriptedRunner]:
    """A scripted runner, released at teardown so no runner thread outlives the test for long."""
    scripted = ScriptedRunner()
    yield scripted
    scripted.release()


@pytest.fixture
def runpod(runner: ScriptedRunner) -> Iterator[EndpointServer]:
    """The local RunPod endpoint (id `local`, 8 workers) running `runner`."""
    with EndpointServer(EndpointConfig(endpoint_id="local", workers=8), runner) as server:
        yield server


@pytest.fixture
def serve(
    request: pytest.FixtureRequest,
    migrated_url: str,  # noqa: F811
    runpod: EndpointServer,
    tmp_path: Path,
) -> Iterator[Callable[..., KleinServe]]:
    """`serve(worker_id, **ENV)`: a started, ready `klein serve` on a free port, against the test
    database and endpoint, with short timings; stopped at teardown (SIGTERM, then SIGKILL)."""
    processes: list[KleinServe] = []
    request.node.stash[PROCESSES] = processes
    storage_dir = tmp_path / "storage"

    def start(worker_id: str, **overrides: str) -> KleinServe:
        env = base_env() | SHORT_TIMINGS
        env |= {
            "DATABASE_URL": migrated_url,
            "RUNPOD_API_BASE": runpod.api_base,
            "RUNPOD_ENDPOINT_ID": "local",
            "LOCAL_STORAGE_DIR": str(storage_dir),
            "WORKER_ID": worker_id,
        }
        env |= overrides
        process = KleinServe(worker_id, env, tmp_path / f"klein-serve-{worker_id}.log")
        processes.append(process)
        process.wait_ready()
        return process

    try:
        yield start
    finally:
        for process in processes:
            process.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach every `klein serve` log of a failed test to its report."""
    report = yield
    if report.failed:
        for process in item.stash.get(PROCESSES, []):
            report.sections.append((f"klein serve {process.worker_id}", process.log()))
    return report
