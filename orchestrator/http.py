"""The orchestrator's HTTP face: intake webhook, RunPod's completion webhook, health, metrics,
and the dashboard (orchestrator/dashboard/).

Webhooks only wake the claimer; the database decides what happens, so duplicates are harmless.
"""

import asyncio
import hmac
import ipaddress
import json
import re
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from orchestrator.dashboard.access import bearer_token
from orchestrator.dashboard.routes import add_dashboard
from orchestrator.db import Database, Row, bounded
from orchestrator.errors import ConfigError
from orchestrator.metrics import Metrics
from orchestrator.outputs import Delivery
from orchestrator.settings import Settings
from orchestrator.webhook_scan import IdScan, MalformedRunPodId, checked_id_of

# A Database Webhook body is a few hundred bytes (the row itself); 64 KiB leaves room for wide rows.
INTAKE_MAX_BYTES = 64 * 1024
# Supabase's webhook sender and RunPod give up after a few seconds: answer within two.
DB_DEADLINE_S = 2.0
# What flow.py's secrets.token_urlsafe(24) makes (32 characters), with room to spare.
WEBHOOK_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")


class Waker(Protocol):
    """What the app needs of the running orchestrator."""

    def nudge(self, source: str = "other") -> None:
        """Wake the claimer."""

    def wake_job(self, job_id: str) -> bool:
        """Poll one in-flight job's RunPod status now."""

    async def delivery_for(self, job_id: str) -> Delivery | None:
        """Room to keep a completion webhook's body for its job, if the job is driven here and
        room comes soon enough."""

    async def runpod_callback(
        self,
        token: str,
        job: Mapping[str, Any],
        runpod_id: str | None,
        delivery: Delivery | None = None,
    ) -> None:
        """Handle RunPod's completion webhook for the job (row) its token belongs to: the body's
        RunPod id, and the body itself in `delivery` when there was room to keep it."""

    async def open_delivery(self, delivery: Delivery) -> str | None:
        """Parse a kept body, once, for its job; its RunPod id."""

    @property
    def operator_problems(self) -> dict[str, str]:
        """Open problems only an operator can fix, by service."""


class BadBody(ValueError):
    """A webhook body we cannot read a job id from."""


class BodyTooLarge(ValueError):
    """A request body over its route's cap (HTTP 413)."""


async def read_capped_body(
    request: Request,
    max_bytes: int,
    into: Callable[[bytes], None] | None = None,
    *,
    keep: bool = True,
) -> bytes:
    """The request body, refused (BodyTooLarge) as soon as it passes max_bytes: never read whole.
    With `into`, each chunk goes there too; without `keep`, nothing is kept (b"" is returned)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(f"the body is over {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise BodyTooLarge(f"the body is over {max_bytes} bytes")
            if keep:
                chunks.append(chunk)
            if into is not None:
                into(chunk)
    except ClientDisconnect:
        raise BadBody("the sender hung up before the body ended") from None
    return b"".join(chunks)


def parse_json(raw: bytes) -> object:
    """JSON from bytes; anything unreadable, nesting too deep included, is a BadBody."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise BadBody("the JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadBody(str(exc)) from None


class DeletedRow(Exception):
    """A Database Webhook's DELETE event: no job to run (a webhook set up for every event)."""

    def __init__(self, job_id: str | None) -> None:
        super().__init__(job_id)
        self.job_id = job_id


def job_id_from_body(body: object) -> str:
    """The job id of a Supabase Database Webhook body, or of the seed's wrapped body;
    DeletedRow for a DELETE event (its `record` is null, its `old_record` the row)."""
    if isinstance(body, Mapping) and isinstance(body.get("body"), Mapping):
        body = body["body"]
    if isinstance(body, Mapping) and body.get("type") == "DELETE":
        old = body.get("old_record")
        old_id = old.get("id") if isinstance(old, Mapping) else None
        raise DeletedRow(_uuid_or_none(old_id))
    record = body.get("record") if isinstance(body, Mapping) else None
    job_id = record.get("id") if isinstance(record, Mapping) else None
    if not isinstance(job_id, str) or not job_id:
        raise BadBody('expected {"record": {"id": "<generation_jobs id>"}}')
    if (normalised := _uuid_or_none(job_id)) is None:
        raise BadBody("record.id must be a UUID")
    return normalised


def _uuid_or_none(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


async def runpod_id_of_body(
    request: Request, max_bytes: int, delivery: Delivery | None = None
) -> str | None:
    """read_capped_body's checks, and the RunPod id of a body not kept (scanned chunk by chunk,
    IdScan; MalformedRunPodId when it names one that is not RunPod's). A body kept in
    `delivery` is parsed once, for its id and for its job (`Waker.open_delivery`; None here):
    scanning it as well cost 8% of klein serve's CPU under steady load."""
    if delivery is not None:
        delivery.body = await read_capped_body(request, max_bytes)
        return None
    scan = IdScan()
    await read_capped_body(request, max_bytes, into=scan.feed, keep=False)
    return scan.checked_id()


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


def bearer_ok(authorization: str | None, token: str | None) -> bool:
    """Constant-time check of `Authorization: Bearer <token>`, the scheme in any case as RFC 9110
    has it (everything passes without a token)."""
    if token is None:
        return True
    given = bearer_token(authorization)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def configured_secret(value: SecretStr | None, name: str) -> str | None:
    """A secret setting's value; set but blank is refused, since it would turn a check off."""
    if value is None:
        return None
    secret = value.get_secret_value()
    if not secret.strip():
        raise ConfigError(
            f"{name} is set but empty, which would turn its check off: "
            f"unset {name} or set it to a real secret"
        )
    if not (secret.isascii() and secret.isprintable()) or secret != secret.strip():
        # HTTP drops a header value's outer spaces and carries no UTF-8: it could never match.
        raise ConfigError(
            f"{name} must be printable ASCII with no space at either end, since it travels in "
            "an HTTP header; any other value could never match"
        )
    return secret


def is_loopback(host: str) -> bool:
    """Whether host (an address or `localhost`) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def valid_token(token: str) -> bool:
    """Whether token could be one flow.py made; anything else is not looked up at all."""
    return WEBHOOK_TOKEN.fullmatch(token) is not None


async def lookup(db: Database, name: str, **params: Any) -> Row | None:
    """A named query bounded by DB_DEADLINE_S; psycopg.Error or TimeoutError past it."""
    return await bounded(DB_DEADLINE_S, db.one(name, timeout_s=DB_DEADLINE_S, **params))


def error(message: str, status_code: int) -> JSONResponse:
    """The house error body."""
    return JSONResponse({"error": message}, status_code=status_code)


def add_runpod_webhook(app: FastAPI, settings: Settings, db: Database, waker: Waker) -> None:
    """RunPod's completion webhook: POST /runpod/webhook/{token}."""

    @app.post("/runpod/webhook/{token}")
    async def runpod_done(token: str, request: Request) -> JSONResponse:
        if not valid_token(token):
            return error("unknown webhook token", 404)
        try:
            row = await lookup(db, "job_by_webhook_token", token=token)
        except (psycopg.Error, TimeoutError):
            return error("database unavailable; retry later", 503)
        if row is None:
            return error("unknown webhook token", 404)
        delivery = None
        if row["runpod_job_id"] is not None:
            # Its recorded RunPod job has most likely ended. With room to keep the body (the
            # whole output, megabytes), the job gets it and reads no /status; without, it polls
            # now, while the body is still arriving. A stray's only makes it poll once early,
            # and the DB_DEADLINE_S below starts after the body.
            delivery = await waker.delivery_for(str(row["id"]))
            if delivery is None:
                waker.wake_job(str(row["id"]))
        try:
            return await _take_runpod_webhook(request, token, row, delivery)
        finally:
            if delivery is not None and not delivery.handed_over:
                delivery.release()

    async def _take_runpod_webhook(
        request: Request, token: str, row: Row, delivery: Delivery | None
    ) -> JSONResponse:
        try:
            async with asyncio.timeout(settings.webhook_body_deadline_s):
                runpod_id = await runpod_id_of_body(
                    request, settings.runpod_webhook_max_bytes, delivery
                )
        except TimeoutError:
            return error("the body took too long to arrive (WEBHOOK_BODY_DEADLINE_S)", 408)
        except BodyTooLarge as exc:
            return error(f"{exc} (RUNPOD_WEBHOOK_MAX_BYTES)", 413)
        except (BadBody, MalformedRunPodId) as exc:
            return error(f"malformed body: {exc}", 422)
        if delivery is not None:  # outside the deadlines: its parse is bounded by the body cap
            runpod_id = await waker.open_delivery(delivery)
            try:  # an id that is not RunPod's reaches no RunPod URL and no log: nothing is done
                checked_id_of(delivery.status)
            except MalformedRunPodId as exc:
                return error(f"malformed body: {exc}", 422)
        try:
            await bounded(DB_DEADLINE_S, waker.runpod_callback(token, row, runpod_id, delivery))
        except (psycopg.Error, TimeoutError):
            return error("database unavailable; retry later", 503)
        return JSONResponse({"ok": True})


def create_app(
    settings: Settings,
    db: Database,
    waker: Waker,
    metrics: Metrics,
    storage_root: Path | None = None,
) -> FastAPI:
    """The FastAPI app; `storage_root` serves LocalStorage's files under /storage.

    Raises ConfigError when WEBHOOK_SECRET, METRICS_TOKEN or DASHBOARD_TOKEN is set but empty.
    """
    # No schema or docs pages (they list every route to anyone), and no redirect of a path with
    # a trailing slash: its Location was built from the Host header, before any check.
    app = FastAPI(
        title="Klein I2I orchestrator",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,
    )

    @app.exception_handler(HTTPException)
    async def house_error(request: Request, exc: HTTPException) -> JSONResponse:
        # An unknown path (404) or method (405) answers in the house shape too.
        response = error(str(exc.detail), exc.status_code)
        response.headers.update(exc.headers or {})
        return response

    secret = configured_secret(settings.webhook_secret, "WEBHOOK_SECRET")
    metrics_token = configured_secret(settings.metrics_token, "METRICS_TOKEN")
    dashboard_token = configured_secret(settings.dashboard_token, "DASHBOARD_TOKEN")
    add_dashboard(
        app, db, settings.klein_template_id, dashboard_token, jobs=settings.dashboard_jobs
    )

    @app.post("/webhook/klein_i2i")
    async def intake(request: Request) -> JSONResponse:
        if not secret_ok(request.headers.get("x-webhook-secret"), secret):
            return error("missing or wrong X-Webhook-Secret", 401)
        try:
            async with asyncio.timeout(settings.intake_body_deadline_s):
                raw = await read_capped_body(request, INTAKE_MAX_BYTES)
            job_id = job_id_from_body(parse_json(raw))
        except TimeoutError:
            return error("the body took too long to arrive (INTAKE_BODY_DEADLINE_S)", 408)
        except BodyTooLarge as exc:
            return error(f"{exc}: a Database Webhook body is a few hundred bytes", 413)
        except BadBody as exc:
            return error(f"malformed body: {exc}", 422)
        except DeletedRow as deleted:
            ignored = {"job_id": deleted.job_id, "accepted": False}
            return JSONResponse(ignored | {"reason": "a DELETE event: nothing to run"})
        try:
            row = await lookup(db, "job_for_intake", job_id=job_id)
        except (psycopg.Error, TimeoutError):
            waker.nudge("webhook")
            return error("database unavailable; retry later", 503)
        reason = intake_verdict(row, settings.klein_template_id)
        if reason is None:
            waker.nudge("webhook")
            return JSONResponse({"job_id": job_id, "accepted": True})
        return JSONResponse({"job_id": job_id, "accepted": False, "reason": reason})

    add_runpod_webhook(app, settings, db, waker)

    # HEAD too: load balancers and uptime monitors probe with it (RFC 9110: wherever GET is).
    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.api_route("/readyz", methods=["GET", "HEAD"])
    async def readyz() -> JSONResponse:
        if not await db.ping():
            return JSONResponse({"status": "database unreachable"}, status_code=503)
        problems = waker.operator_problems
        if problems:
            body = {"status": "waiting for an operator", "problems": problems}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        if not bearer_ok(request.headers.get("authorization"), metrics_token):
            response = error("missing or wrong Authorization: Bearer <METRICS_TOKEN>", 401)
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if storage_root is not None:
        storage_root.mkdir(parents=True, exist_ok=True)
        app.mount("/storage", StaticFiles(directory=storage_root), name="storage")
    return app
