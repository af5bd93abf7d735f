"""A local server speaking RunPod Serverless's REST API: a development tool, not for production.

Point `RUNPOD_API_BASE` at `http://host:port/v2` and the orchestrator works without RunPod.
Routes under `/v2/{endpoint_id}`: `POST /run`, `POST /runsync`, `GET|POST /status/{id}`,
`GET /stream/{id}`, `POST /cancel/{id}`, `GET /health`, `POST /purge-queue`; and RunPod's
worker-facing API (`worker_api.py`), which `--workers N` subprocesses running `python -m handler`
take jobs from (`workers.py`). The job life is drawn in `jobs.py`.
"""

from devtools.endpoint.app import create_app
from devtools.endpoint.config import EndpointConfig
from devtools.endpoint.engine import LocalEndpoint
from devtools.endpoint.jobs import RunPodStatus
from devtools.endpoint.runner import JobRunner, ProgressSource, Stoppable
from devtools.endpoint.server import EndpointServer, serve

__all__ = [
    "EndpointConfig",
    "EndpointServer",
    "JobRunner",
    "LocalEndpoint",
    "ProgressSource",
    "RunPodStatus",
    "Stoppable",
    "create_app",
    "serve",
]
