"""The local endpoint with the project's real handler: for `klein endpoint` and `klein serve`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from devtools.endpoint.config import EndpointConfig
from devtools.endpoint.handler_runner import HandlerRunner
from devtools.endpoint.server import EndpointServer
from handler.config import HandlerSettings
from handler.workflow import WorkflowError
from orchestrator.errors import ConfigError

log = logging.getLogger(__name__)

# A first look for ComfyUI at start; jobs that meet no ComfyUI fail with a sentence saying so.
COMFY_PROBE_S = 3.0


def handler_runner(settings: HandlerSettings) -> HandlerRunner:
    """The real handler as the endpoint's runner; an unusable graph is a ConfigError at start."""
    try:
        return HandlerRunner(settings)
    except WorkflowError as exc:
        raise ConfigError(f"the handler's graph cannot be used: {exc}") from exc


def probe_comfy_in_background(runner: HandlerRunner, timeout_s: float | None = None) -> None:
    """Say at start, not at the first job, when no ComfyUI answers (the runner logs either way)."""
    threading.Thread(
        target=runner.wait_for_comfy, args=(timeout_s,), name="comfy-probe", daemon=True
    ).start()


@contextmanager
def local_endpoint(endpoint_id: str, workers: int, execution_timeout_s: float) -> Iterator[str]:
    """Run the endpoint with the real handler on a free port for as long as the block lasts;
    yields its API base (what `RUNPOD_API_BASE` should be). `klein serve`'s entry point."""
    handler_settings = HandlerSettings()
    runner = handler_runner(handler_settings)
    config = EndpointConfig(
        endpoint_id=endpoint_id,
        workers=workers,
        execution_timeout_ms=int(execution_timeout_s * 1000),
    )
    with EndpointServer(config, runner) as server:
        log.warning(
            "no RUNPOD_ENDPOINT_ID: jobs run on a local RunPod endpoint (%s, a development "
            "tool) with this project's handler and the ComfyUI at %s",
            server.api_base,
            handler_settings.comfy_api_url,
        )
        probe_comfy_in_background(runner, COMFY_PROBE_S)
        yield server.api_base
