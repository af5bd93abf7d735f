"""`klein endpoint` and `klein comfy-standin`: added to klein's command line by entry point."""

from __future__ import annotations

import argparse
from typing import Any

from devtools import comfy_standin
from orchestrator.errors import ConfigError
from orchestrator.plugins import INSTALL


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the dev tools' subcommands; each sets `run(args, settings)` as its default."""
    _add_endpoint(commands).set_defaults(run=run_endpoint)
    standin = commands.add_parser(
        "comfy-standin",
        help="DEVELOPMENT TOOL: a ComfyUI protocol stand-in (no GPU) for the handler",
        description=(
            "A development tool, not for production: speaks ComfyUI v0.33.0's HTTP and websocket "
            "API and saves the scaled reference image instead of computing the graph. Point the "
            "handler's COMFY_API_URL at the URL it prints."
        ),
    )
    comfy_standin.add_arguments(standin)
    standin.set_defaults(run=run_comfy_standin)


def _add_endpoint(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    endpoint = commands.add_parser(
        "endpoint",
        help="DEVELOPMENT TOOL: a local RunPod endpoint with real handler worker processes",
        description=(
            "A development tool, not for production: serves RunPod Serverless's REST API "
            "(/v2/{endpoint_id}/run, runsync, status, stream, cancel, health, purge-queue) and "
            "its worker-facing API (job-take, job-stop, job-done, ping), and starts --workers "
            "processes running the container's entry command (python -m handler, the runpod "
            "SDK's job loop) against COMFY_API_URL. Point the orchestrator's RUNPOD_API_BASE at "
            "http://HOST:PORT/v2 and RUNPOD_ENDPOINT_ID at --endpoint-id."
        ),
    )
    endpoint.add_argument("--host", default="127.0.0.1")
    endpoint.add_argument("--port", type=int, default=8000)
    endpoint.add_argument("--endpoint-id", default="local")
    endpoint.add_argument(
        "--workers", type=int, default=1, help="worker processes (jobs run at once)"
    )
    endpoint.add_argument("--execution-timeout-s", type=float, default=600.0)
    endpoint.add_argument("--result-retention-s", type=float, default=1800.0)
    return endpoint


def run_endpoint(args: argparse.Namespace, settings: Any) -> int:
    """Serve the local RunPod-compatible endpoint until interrupted (`settings`: klein's)."""
    try:
        from devtools.endpoint import EndpointConfig, serve  # noqa: PLC0415
        from devtools.endpoint.local import (  # noqa: PLC0415
            check_handler,
            probe_comfy_in_background,
        )
        from handler.config import HandlerSettings  # noqa: PLC0415 - needs the handler extra
    except ImportError as exc:  # installed without the extras the endpoint runs the handler with
        raise ConfigError(
            f"the local RunPod endpoint is a development tool that needs {exc.name or 'a module'}, "
            f"which is not installed: {INSTALL}"
        ) from exc

    api_key = settings.runpod_api_key.get_secret_value() if settings.runpod_api_key else None
    config = EndpointConfig(
        endpoint_id=args.endpoint_id,
        api_key=api_key,
        workers=args.workers,
        execution_timeout_ms=int(args.execution_timeout_s * 1000),
        result_retention_s=args.result_retention_s,
    )
    handler_settings = HandlerSettings()
    check_handler(handler_settings)
    # Logs whether ComfyUI answers, without holding the endpoint back: jobs queue meanwhile.
    probe_comfy_in_background(handler_settings)
    serve(config, host=args.host, port=args.port)
    return 0


def run_comfy_standin(args: argparse.Namespace, settings: Any) -> int:
    """Serve the ComfyUI stand-in in the foreground until interrupted."""
    if not comfy_standin.DATA_DIR.is_dir():
        raise ConfigError(
            "the ComfyUI stand-in answers with a real ComfyUI's recordings in "
            f"{comfy_standin.DATA_DIR}, which this installation lacks: "
            "reinstall klein-i2i[devtools]"
        )
    return comfy_standin.serve(args)
