"""The orchestrator's HTTP face: intake webhook, RunPod's completion webhook, health, metrics.

Webhooks only wake the claimer; the database decides what happens, so duplicates are harmless.
"""

import hmac
import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator.db import Database
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings


class Waker(Protocol):
    """What the app needs of the running orchestrator."""

    def nudge(self, source: str = "other") -> None:
        """Wake the claimer."""

    def wake_job(self, job_id: str) -> bool:
        """Poll one in-flight job's RunPod status now."""

    async def runpod_callback(self, token: str, runpod_id: str | None) -> bool:
        """Handle RunPod's completion webhook for a job's token; False if no job has it."""

    @property
    def operator_problems(self) -> dict[str, str]:
        """Open problems only an operator can fix, by service."""


class BadBody(ValueError):
    """A webhook body we cannot read a job id from."""


def job_id_from_body(body: object) -> str:
    """The job id of a Supabase Database Webhook body, or of the seed's wrapped body."""
    if isinstance(body, Mapping) and isinstance(body.get("body"), Mapping):
        body = body["body"]
    record = body.get("record") if isinstance(body, Mapping) else None
    job_id = record.get("id") if isinstance(record, Mapping) else None
    if not isinstance(job_id, str) or not job_id:
        raise BadBody('expected {"record": {"id": "<generation_jobs id>"}}')
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        raise BadBody("record.id must be a UUID") from None


def runpod_id_from_body(body: bytes) -> str | None:
    """The RunPod job id in a completion webhook's body (the job's status object), if any."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None
    job_id = parsed.get("id") if isinstance(parsed, dict) else None
    return job_id if isinstance(job_id, str) and 0 < len(job_id) <= 200 else None


def intake_verdict(row: Mapping[str, Any] | None, template_id: str) -> str | None:
    """Why a webhook's job is not for us (None: it is, and still pending)."""
    if row is None:
        return "unknown job"
    if str(row["template_id"]) != template_id:
        return "not a Klein job"
    if row["status"] != "pending":
        return f"job is {row['status']}"
    return None


def secret_ok(given: str | None, expected: str | None) -> bool:
    """Constant-time check of X-Webhook-Secret (everything passes when no secret is set)."""
    if expected is None:
        return True
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def create_app(
    settings: Settings,
    db: Database,
    waker: Waker,
    metrics: Metrics,
    storage_root: Path | None = None,
) -> FastAPI:
    """The FastAPI app; `storage_root` serves LocalStorage's files under /storage."""
    app = FastAPI(title="Klein I2I orchestrator", docs_url=None, redoc_url=None)
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None

    @app.post("/webhook/klein_i2i")
    async def intake(request: Request) -> JSONResponse:
        if not secret_ok(request.headers.get("x-webhook-secret"), secret):
            return JSONResponse({"error": "missing or wrong X-Webhook-Secret"}, status_code=401)
        try:
            job_id = job_id_from_body(json.loads(await request.body()))
        except (ValueError, BadBody) as exc:
            return JSONResponse({"error": f"malformed body: {exc}"}, status_code=422)
        try:
            # Supabase's webhook sender gives up after a few seconds: answer within two.
            row = await db.one("job_for_intake", timeout_s=2.0, job_id=job_id)
        except psycopg.Error:
            waker.nudge("webhook")
            return JSONResponse({"error": "database unavailable; retry later"}, status_code=503)
        reason = intake_verdict(row, settings.klein_template_id)
        if reason is None:
            waker.nudge("webhook")
            return JSONResponse({"job_id": job_id, "accepted": True})
        return JSONResponse({"job_id": job_id, "accepted": False, "reason": reason})

    @app.post("/runpod/webhook/{token}")
    async def runpod_done(token: str, request: Request) -> JSONResponse:
        await waker.runpod_callback(token, runpod_id_from_body(await request.body()))
        return JSONResponse({"ok": True})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if not await db.ping():
            return JSONResponse({"status": "database unreachable"}, status_code=503)
        problems = waker.operator_problems
        if problems:
            body = {"status": "waiting for an operator", "problems": problems}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if storage_root is not None:
        storage_root.mkdir(parents=True, exist_ok=True)
        app.mount("/storage", StaticFiles(directory=storage_root), name="storage")
    return app
