"""`klein serve`: the HTTP app and the orchestrator's loops in one process, stopped by SIGTERM."""

import asyncio
import errno
import logging
import signal
import socket
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass

import psycopg
import uvicorn
from fastapi import FastAPI

from orchestrator.alerts import OperatorAlerts
from orchestrator.cpu import CpuLane
from orchestrator.dashboard.routes import close_dashboard
from orchestrator.db import Database, DatabaseUnreachable, unreachable
from orchestrator.deps import FlowDeps
from orchestrator.errors import ConfigError
from orchestrator.http import configured_secret, create_app, is_loopback
from orchestrator.http_head import BoundedHeadProtocol
from orchestrator.metrics import Metrics
from orchestrator.open_files import (
    DATABASE_CONNECTIONS,
    make_room_for_sockets,
    open_files_needed,
)
from orchestrator.openrouter import OpenRouterClient, openrouter_sdk
from orchestrator.outputs import OutputSlots
from orchestrator.polls import PollShare
from orchestrator.runpod import RunPodClient, endpoint_budget, runpod_http
from orchestrator.service import Orchestrator
from orchestrator.settings import Settings
from orchestrator.storage import LocalStorage, Storage, SupabaseStorage, supabase_storage
from orchestrator.uploads import MiB, UploadBudget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Address:
    """Where the HTTP app listens."""

    host: str
    port: int

    @property
    def base_url(self) -> str:
        """The URL this process answers on (for local storage links)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"


LISTEN_BACKLOG = 2048  # uvicorn's default


def bind(address: Address) -> socket.socket:
    """The listening socket, bound before anything else starts; a busy or refused address is a
    ConfigError in one sentence."""
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM
        )[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError, OverflowError) as exc:
        raise ConfigError(f"cannot listen on {address.host}:{address.port}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        # Listening now, not when uvicorn starts: "serving on" is logged before the server task
        # runs, and a client that connects meanwhile waits in the backlog instead of being refused.
        sock.listen(LISTEN_BACKLOG)
    except (OSError, OverflowError) as exc:
        sock.close()
        if getattr(exc, "errno", None) == errno.EADDRINUSE:
            raise ConfigError(
                f"port {address.port} on {address.host} is already in use: stop what listens "
                "there or choose another port with --port (or KLEIN_PORT)"
            ) from exc
        raise ConfigError(f"cannot listen on {address.host}:{address.port}: {exc}") from exc
    return sock


def require(settings: Settings) -> tuple[str, str]:
    """DATABASE_URL and RUNPOD_ENDPOINT_ID, or a ConfigError naming what is missing."""
    if not settings.database_url:
        raise ConfigError("set DATABASE_URL (a PostgreSQL URL) and run `klein migrate` once")
    if not settings.runpod_endpoint_id:
        raise ConfigError("set RUNPOD_ENDPOINT_ID (and RUNPOD_API_KEY, or RUNPOD_API_BASE)")
    return settings.database_url, settings.runpod_endpoint_id


def make_storage(settings: Settings, address: Address) -> Storage:
    """Supabase Storage when configured, else a local folder served by this process."""
    if settings.uses_supabase_storage:
        if not settings.supabase_url or not settings.supabase_service_role_key:
            raise ConfigError(
                "STORAGE_BACKEND=supabase needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY"
            )
        key = settings.supabase_service_role_key.get_secret_value()
        return supabase_storage(settings.supabase_url, key, settings.storage_bucket)
    public = settings.public_base_url or address.base_url
    return LocalStorage(settings.local_storage_dir, settings.storage_bucket, public)


async def check_schema(db: Database) -> None:
    """Fail clearly when the migrations were never applied."""
    async with db.transaction() as conn:
        cursor = await conn.execute("SELECT to_regclass('public.generation_jobs') IS NOT NULL")
        row = await cursor.fetchone()
    if not row or not row[0]:
        raise ConfigError("the database has no generation_jobs table; run `klein migrate` first")


def check_http_face(settings: Settings, address: Address) -> None:
    """Refuse blank secrets (a ConfigError); warn when /metrics is open beyond this machine."""
    configured_secret(settings.webhook_secret, "WEBHOOK_SECRET")
    configured_secret(settings.dashboard_token, "DASHBOARD_TOKEN")
    metrics_token = configured_secret(settings.metrics_token, "METRICS_TOKEN")
    if metrics_token is None and not is_loopback(address.host):
        log.warning(
            "METRICS_TOKEN is not set and klein serve listens on %s: /metrics is open to "
            "anyone who can reach this port; set METRICS_TOKEN to require a bearer token",
            address.host,
        )


async def run_server(
    settings: Settings, address: Address, sock: socket.socket | None = None
) -> None:
    """Serve until SIGTERM/SIGINT/SIGHUP, then hand in-flight jobs over and exit (on `sock` when
    given, already bound to `address`)."""
    check_http_face(settings, address)
    make_room_for_sockets(open_files_needed(settings))
    database_url, endpoint_id = require(settings)
    metrics = Metrics()
    async with AsyncExitStack() as stack:
        db = Database(
            database_url,
            max_size=max(4, min(DATABASE_CONNECTIONS, settings.max_in_flight // 4 + 4)),
        )
        try:
            await db.open()
        except DatabaseUnreachable as exc:
            raise ConfigError(str(exc)) from exc
        except psycopg.Error as exc:
            raise ConfigError(str(unreachable(database_url, exc))) from exc
        stack.push_async_callback(db.close)
        await check_schema(db)
        http = await stack.enter_async_context(runpod_http(timeout_s=30))
        storage = make_storage(settings, address)
        if isinstance(storage, SupabaseStorage):
            stack.push_async_callback(storage.aclose)
        api_key = settings.runpod_api_key.get_secret_value() if settings.runpod_api_key else None
        cpu = CpuLane(settings.cpu_threads)
        stack.callback(cpu.close)
        run_per_10s, status_per_10s = endpoint_budget(settings.replicas)
        deps = FlowDeps(
            db=db,
            runpod=RunPodClient(
                http,
                settings.runpod_api_base,
                endpoint_id,
                api_key,
                run_per_10s=run_per_10s,
                status_per_10s=status_per_10s,
                metrics=metrics,
                cpu=cpu,
                max_answer_bytes=settings.runpod_webhook_max_bytes,
            ),
            openrouter=await _openrouter(settings, stack, metrics),
            storage=storage,
            settings=settings,
            metrics=metrics,
            alerts=OperatorAlerts(metrics.operator_problems),
            cpu=cpu,
            outputs=OutputSlots(settings.output_slots),
            uploads=UploadBudget(settings.max_uploading_mb * MiB),
            polls=PollShare(status_per_10s),
        )
        orchestrator = Orchestrator(deps, database_url)
        root = None if settings.uses_supabase_storage else settings.local_storage_dir
        app = create_app(settings, db, orchestrator, metrics, storage_root=root)
        stack.push_async_callback(close_dashboard, app)
        listener = sock or bind(address)
        stack.callback(listener.close)
        await _serve_until_signal(app, address, listener, orchestrator, settings)


async def _openrouter(
    settings: Settings, stack: AsyncExitStack, metrics: Metrics
) -> OpenRouterClient | None:
    if settings.openrouter_api_key is None:
        log.warning(
            "OPENROUTER_API_KEY is not set: Korean prompts go on untranslated "
            "and titles use the fallback"
        )
        return None
    client = openrouter_sdk(
        settings.openrouter_base_url,
        settings.openrouter_api_key.get_secret_value(),
        connections=settings.openrouter_max_concurrency,
    )
    await stack.enter_async_context(client)
    return OpenRouterClient(
        client,
        translate_model=settings.translate_model,
        title_model=settings.title_model,
        max_concurrency=settings.openrouter_max_concurrency,
        requests_per_minute=settings.openrouter_rpm,
        metrics=metrics,
    )


class _Server(uvicorn.Server):
    """uvicorn, leaving SIGTERM/SIGINT to us: the orchestrator must hand over before exit."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install nothing."""
        yield


async def _serve_until_signal(
    app: FastAPI,
    address: Address,
    sock: socket.socket,
    orchestrator: Orchestrator,
    settings: Settings,
) -> None:
    # The server's own bounds (docs/security.md); each body's deadline is its route's.
    config = uvicorn.Config(
        app,
        host=address.host,
        port=address.port,
        log_level="warning",
        lifespan="off",
        limit_concurrency=settings.http_max_connections,
        timeout_keep_alive=settings.http_keep_alive_s,
        # The peer is who connected: X-Forwarded-For does not rewrite it (with uvicorn's
        # FORWARDED_ALLOW_IPS='*' anyone could claim 127.0.0.1 and read the dashboard).
        proxy_headers=False,
        http=BoundedHeadProtocol,
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()

    def stop() -> None:
        orchestrator.stop()
        server.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # a closed terminal too
        loop.add_signal_handler(signum, stop)
    log.info("serving on %s (worker %s)", address.base_url, settings.worker_id)
    web = asyncio.create_task(server.serve(sockets=[sock]))
    work = asyncio.create_task(orchestrator.run())
    done, _ = await asyncio.wait({web, work}, return_when=asyncio.FIRST_COMPLETED)
    stop()
    try:
        await asyncio.wait_for(asyncio.gather(web, work), timeout=settings.shutdown_grace_s + 5)
    except TimeoutError:
        log.error("shutdown took longer than %g s; leaving", settings.shutdown_grace_s + 5)
    for task in done:
        task.result()  # a loop that died re-raises here
