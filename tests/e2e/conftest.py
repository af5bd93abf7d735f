"""End-to-end fixtures: `klein serve` as a real subprocess over a fresh, migrated database, and
either the local RunPod endpoint (in this process) with a scripted runner, or the whole stack:
`klein endpoint` as a process running the real handler against a ComfyUI. A failing test's report
carries the log of every process it started."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.comfy_standin import ComfyTestServer
from devtools.endpoint.config import EndpointConfig
from devtools.endpoint.server import EndpointServer
from tests.e2e.fullstack import ImageHost, KleinEndpoint, Stack, endpoint_env
from tests.e2e.servekit import (
    KleinServe,
    ScriptedRunner,
    ServiceProcess,
    serve_env,
    stop_all,
)
from tests.fakes.openrouter import OpenRouterServer
from tests.integration.conftest import migrated_url, pg_server, pg_url  # noqa: F401

PROCESSES = pytest.StashKey[list[ServiceProcess]]()


def started_processes(request: pytest.FixtureRequest) -> list[ServiceProcess]:
    """The test's list of processes whose logs a failure reports (appended to by fixtures)."""
    return request.node.stash.setdefault(PROCESSES, [])


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
    storage_dir = tmp_path / "storage"

    def start(worker_id: str, *, port: int | None = None, **overrides: str) -> KleinServe:
        env = serve_env(migrated_url, runpod.api_base, storage_dir, worker_id) | overrides
        log_path = tmp_path / f"klein-serve-{worker_id}.log"
        process = KleinServe(worker_id, env, log_path, port=port)
        processes.append(process)
        started_processes(request).append(process)
        process.wait_ready()
        return process

    try:
        yield start
    finally:
        for process in processes:
            process.stop()


@pytest.fixture
def full_stack(
    request: pytest.FixtureRequest,
    migrated_url: str,  # noqa: F811
    openrouter_server: OpenRouterServer,
    tmp_path: Path,
) -> Iterator[Callable[..., Stack]]:
    """`full_stack(comfy_url, comfy_root=None, *endpoint_args, **ENDPOINT_ENV)`: a started, ready
    `klein endpoint` (the real handler, against that ComfyUI) and `klein serve` in front of it
    (the test database, the OpenRouter test server, local storage); both stopped at teardown."""
    processes: list[ServiceProcess] = []

    def start(
        comfy_url: str, comfy_root: Path | None = None, *endpoint_args: str, **overrides: str
    ) -> Stack:
        env = endpoint_env(comfy_url, comfy_root, **overrides)
        endpoint = KleinEndpoint(env, tmp_path / "klein-endpoint.log", *endpoint_args)
        storage_dir = tmp_path / "storage"
        env = serve_env(migrated_url, endpoint.api_base, storage_dir, "e2e-full") | {
            "OPENROUTER_BASE_URL": openrouter_server.base_url,
            "OPENROUTER_API_KEY": openrouter_server.api_key,
        }
        klein = KleinServe("e2e-full", env, tmp_path / "klein-serve-e2e-full.log")
        for process in (klein, endpoint):
            processes.append(process)
            started_processes(request).append(process)
        endpoint.wait_ready()
        klein.wait_ready()
        return Stack(migrated_url, klein, endpoint, storage_dir)

    try:
        yield start
    finally:
        stop_all(processes)


@pytest.fixture
def stack(full_stack: Callable[..., Stack], comfy_server: ComfyTestServer) -> Stack:
    """The whole stack against the ComfyUI protocol server; the handler knows its folder
    (COMFY_ROOT), so it removes each job's files there."""
    return full_stack(comfy_server.url, comfy_server.root)


@pytest.fixture
def image_host() -> Iterator[ImageHost]:
    """A started web host for reference images."""
    with ImageHost() as host:
        yield host


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the log of every process a failed test started to its report."""
    report = yield
    if report.failed:
        for process in item.stash.get(PROCESSES, []):
            report.sections.append((process.name, process.log()))
    return report
