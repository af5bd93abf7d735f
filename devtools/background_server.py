"""The common part of the protocol servers (the ComfyUI stand-in; the tests' OpenRouter and
Storage): an aiohttp app run on its own loop in a thread, plus a queue of scripted answers
(failures and stalls), a development hook for playing an outside system's faults on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import web


@dataclass(frozen=True)
class Scripted:
    """One scripted answer: after `delay_s`, `status` with `body`, or the normal answer if None."""

    status: int | None
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def encode_body(payload: dict[str, Any] | list[Any] | str | bytes) -> tuple[bytes, str]:
    """A scripted body as bytes and its content type: JSON for a dict or list, else as given."""
    if isinstance(payload, dict | list):
        return json.dumps(payload, ensure_ascii=False).encode(), "application/json"
    if isinstance(payload, str):
        return payload.encode(), "text/plain"
    return payload, "application/octet-stream"


class ScriptQueue:
    """A thread-safe FIFO of scripted answers: the caller's thread pushes, the server pops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: deque[Scripted] = deque()

    def push(self, item: Scripted, times: int) -> None:
        """Queue `item` for the next `times` requests."""
        if times < 1:
            raise ValueError(f"times must be at least 1, not {times}")
        with self._lock:
            self._items.extend([item] * times)

    def pop(self) -> Scripted | None:
        """The next scripted answer, or None when the queue is empty."""
        with self._lock:
            return self._items.popleft() if self._items else None

    def clear(self) -> None:
        """Drop every queued answer."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class BackgroundServer:
    """An aiohttp app on `host` (127.0.0.1) served from a daemon thread; subclasses give
    `_routes()`."""

    thread_name = "fake-server"

    def __init__(self, *, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.url = ""
        self.script = ScriptQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None

    # ---- lifecycle (called from the caller's thread)

    def start(self) -> Self:
        """Bind `host` (the same port again after a stop) and serve in a background thread."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self.url = f"http://{_url_host(self.host)}:{self.port}"
        self._prepare()
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run_loop, name=self.thread_name, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._astart(sock), loop).result(timeout=10)
        return self

    def stop(self) -> None:
        """Release stalled requests, close the port and end the thread (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(self._astop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stall_next(self, seconds: float, times: int = 1) -> None:
        """Hold the next `times` requests `seconds` before answering normally (client timeouts)."""
        self.script.push(Scripted(status=None, delay_s=seconds), times)

    # ---- for subclasses (run on the server's loop)

    def _routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def _middlewares(self) -> list[Any]:
        """aiohttp middlewares for the app (none by default)."""
        return []

    def _prepare(self) -> None:
        """Reset per-run state before serving (caller's thread)."""

    async def _started(self) -> None:
        """After the site is up: start background tasks."""

    async def _stopping(self) -> None:
        """Before the app is torn down: end background tasks, drop connections."""

    async def _stopped(self) -> None:
        """After the app is torn down."""

    async def _scripted_answer(self) -> web.Response | None:
        """Play the next scripted answer: wait its delay, then its response (None: go on)."""
        item = self.script.pop()
        if item is None:
            return None
        if item.delay_s > 0 and self._closing is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), item.delay_s)
            if self._closing.is_set():  # stopped while stalling: change nothing
                return web.Response(status=503, text="server stopping")
        if item.status is None:
            return None
        return web.Response(
            status=item.status,
            body=item.body,
            content_type=item.content_type,
            headers=item.headers,
        )

    # ---- internals

    def _run_loop(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _astart(self, sock: socket.socket) -> None:
        self._closing = asyncio.Event()
        app = web.Application(middlewares=self._middlewares(), client_max_size=100 * 1024 * 1024)
        app.add_routes(self._routes())
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        await self._started()

    async def _astop(self) -> None:
        if self._closing is not None:
            self._closing.set()
        await self._stopping()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._stopped()


def _url_host(host: str) -> str:
    """Where a client on this machine reaches `host`: loopback for the any-address."""
    return "127.0.0.1" if host in ("", "0.0.0.0") else host  # noqa: S104 - compared, not bound
