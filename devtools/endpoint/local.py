"""The local endpoint with the project's real handler, run as worker subprocesses
(`python -m handler`, the container's own entry command): for `klein endpoint` and `klein serve`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from devtools.endpoint.config import EndpointConfig
from devtools.endpoint.server import EndpointServer
from handler.comfy import ComfyClient
from handler.config import HandlerSettings
from handler.workflow import WorkflowError, load_workflow
from orchestrator.errors import ConfigError

log = logging.getLogger(__name__)

# A first look for ComfyUI at start; jobs that meet no ComfyUI fail with a sentence saying so.
COMFY_PROBE_S = 3.0


def check_handler(settings: HandlerSettings) -> None:
    """An unusable graph is a ConfigError at start, not a worker that exits again and again."""
    try:
        load_workflow(settings.comfy_workflow, settings.comfy_workflows_dir)
    except WorkflowError as exc:
        raise ConfigError(f"the handler's graph cannot be used: {exc}") from exc


def probe_comfy_in_background(settings: HandlerSettings, timeout_s: float = COMFY_PROBE_S) -> None:
    """Say at start, not at the first job, whether ComfyUI answers (the workers wait longer)."""

    def probe() -> None:
        import requests  # noqa: PLC0415 - the handler's dependency, loaded off the start path

        url = settings.comfy_api_url
        with requests.Session() as session:
            client = ComfyClient(url, session, settings.comfy_http_timeout_s)
            if client.wait_until_ready(timeout_s):
                log.info("ComfyUI answers at %s", url)
                return
        log.error(
            "ComfyUI does not answer at %s; jobs fail until it does (start ComfyUI there, or "
            "set COMFY_API_URL to a running ComfyUI)",
            url,
        )

    threading.Thread(target=probe, name="comfy-probe", daemon=True).start()


@contextmanager
def local_endpoint(endpoint_id: str, workers: int, execution_timeout_s: float) -> Iterator[str]:
    """Run the endpoint and its worker subprocesses on a free port for as long as the block
    lasts; yields its API base (what `RUNPOD_API_BASE` should be). `klein serve`'s entry point."""
    handler_settings = HandlerSettings()
    check_handler(handler_settings)
    config = EndpointConfig(
        endpoint_id=endpoint_id,
        workers=workers,
        execution_timeout_ms=int(execution_timeout_s * 1000),
    )
    with EndpointServer(config) as server:
        log.warning(
            "no RUNPOD_ENDPOINT_ID: jobs run on a local RunPod endpoint (%s, a development "
            "tool) with %d worker process(es) running this project's handler against the "
            "ComfyUI at %s",
            server.api_base,
            workers,
            handler_settings.comfy_api_url,
        )
        probe_comfy_in_background(handler_settings)
        yield server.api_base
