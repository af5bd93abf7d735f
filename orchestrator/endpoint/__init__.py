"""A local server speaking RunPod Serverless's REST API: a development tool, not for production.

Point `RUNPOD_API_BASE` at `http://host:port/v2` and the orchestrator works without RunPod.
Routes under `/v2/{endpoint_id}`: `POST /run`, `POST /runsync`, `GET|POST /status/{id}`,
`POST /cancel/{id}`, `GET /health`, `POST /purge-queue`. The real worker is
`orchestrator.endpoint.handler_runner.HandlerRunner`; the job life is drawn in `jobs.py`.
"""

from orchestrator.endpoint.app import create_app
from orchestrator.endpoint.config import EndpointConfig
from orchestrator.endpoint.engine import LocalEndpoint
from orchestrator.endpoint.jobs import JobStatus
from orchestrator.endpoint.runner import JobRunner, ProgressSource, Stoppable
from orchestrator.endpoint.server import EndpointServer, serve

__all__ = [
    "EndpointConfig",
    "EndpointServer",
    "JobRunner",
    "JobStatus",
    "LocalEndpoint",
    "ProgressSource",
    "Stoppable",
    "create_app",
    "serve",
]
