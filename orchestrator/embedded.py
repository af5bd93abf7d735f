"""The embedded defaults: what `klein` runs itself when a service is not configured.

With no `DATABASE_URL`, a PostgreSQL shipped in a wheel (`pgserver`) runs in a local data folder;
with no RunPod endpoint, the local RunPod-compatible endpoint runs this project's handler against
`COMFY_API_URL`. Both are for trying Klein on one machine; production sets the real services.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from orchestrator.errors import ConfigError
from orchestrator.settings import DEFAULT_RUNPOD_API_BASE, Settings

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "klein"
LOCAL_ENDPOINT_ID = "local"
# A first look for ComfyUI at start; jobs that meet no ComfyUI fail with a sentence saying so.
COMFY_PROBE_S = 3.0


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or join) the PostgreSQL kept in `data_dir`; yields the URL of database `klein`.

    The server stops when the last `klein` process using it exits.
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver  # noqa: PLC0415 - only when no DATABASE_URL is set

        try:
            server = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
        except (subprocess.SubprocessError, OSError) as exc:
            raise ConfigError(
                f"the embedded PostgreSQL did not start in {data_dir} ({type(exc).__name__}); "
                f"its log is {data_dir / 'log'}; or set DATABASE_URL to a PostgreSQL server"
            ) from exc
    with server:
        _create_database(server.get_uri(), EMBEDDED_DATABASE)
        yield str(server.get_uri(EMBEDDED_DATABASE))


def _create_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def wants_local_endpoint(settings: Settings) -> bool:
    """True when no RunPod endpoint is configured at all (neither an id nor another API base)."""
    return not settings.runpod_endpoint_id and settings.runpod_api_base == DEFAULT_RUNPOD_API_BASE


def with_runpod_defaults(settings: Settings) -> Settings:
    """An API base other than RunPod's needs no endpoint id: `klein endpoint` answers to `local`."""
    if settings.runpod_endpoint_id:
        return settings
    return settings.model_copy(update={"runpod_endpoint_id": LOCAL_ENDPOINT_ID})


@contextmanager
def local_endpoint(settings: Settings) -> Iterator[Settings]:
    """Run the local RunPod endpoint with the real handler on a free port, for as long as the
    block lasts; yields `settings` pointed at it."""
    try:
        from handler.config import HandlerSettings  # noqa: PLC0415 - needs the handler extra
        from handler.workflow import WorkflowError  # noqa: PLC0415
        from orchestrator.endpoint import EndpointConfig, EndpointServer  # noqa: PLC0415
        from orchestrator.endpoint.handler_runner import HandlerRunner  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(
            "no RUNPOD_ENDPOINT_ID is set and the handler is not installed to run jobs locally: "
            "install the project with its `handler` extra, or set RUNPOD_ENDPOINT_ID"
        ) from exc
    handler_settings = HandlerSettings()
    try:
        runner = HandlerRunner(handler_settings)
    except WorkflowError as exc:
        raise ConfigError(f"the handler's graph cannot be used: {exc}") from exc
    config = EndpointConfig(
        endpoint_id=LOCAL_ENDPOINT_ID,
        workers=settings.local_endpoint_workers,
        execution_timeout_ms=int(settings.job_timeout_s * 1000),
    )
    with EndpointServer(config, runner) as server:
        log.warning(
            "no RUNPOD_ENDPOINT_ID: jobs run on a local RunPod endpoint (%s, a development "
            "tool) with this project's handler and the ComfyUI at %s",
            server.api_base,
            handler_settings.comfy_api_url,
        )
        _probe_comfy_in_background(runner)
        yield settings.model_copy(
            update={"runpod_endpoint_id": LOCAL_ENDPOINT_ID, "runpod_api_base": server.api_base}
        )


def _probe_comfy_in_background(runner: Any) -> None:
    """Say at start, not at the first job, when no ComfyUI answers (the runner logs either way)."""
    threading.Thread(
        target=runner.wait_for_comfy, args=(COMFY_PROBE_S,), name="comfy-probe", daemon=True
    ).start()
