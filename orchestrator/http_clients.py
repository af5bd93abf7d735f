"""The HTTP client klein serve calls RunPod and Supabase Storage with: httpx's interface over
aiohttp's transport (httpx-aiohttp).

httpx's own transport (httpcore, h11 and anyio, pure Python) spent 10.6 ms of CPU on a 2.1 MB
upload, 11.4 ms on reading a finished job's 2.8 MB `/status` answer and 1.9 ms on a `/run`;
through aiohttp the same calls take 4.7, 5.2 and 1.0 ms (bench/http_transport.py).

httpx-aiohttp maps aiohttp's errors onto httpx's, but coarsely: every connection error, a reset
or a disconnect after the request went out included, becomes `httpx.ConnectTimeout`, and errors
it does not know (a malformed answer) come out as aiohttp's own. RunPod's `/run` must tell "never
sent" from "sent, answer lost" (orchestrator/runpod.py, transport_error), and every caller
catches `httpx.HTTPError` only, so this transport names them again: `ConnectError` or
`ConnectTimeout` only when no connection was made, every other failure a read or protocol error.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any, cast

import aiohttp
import httpx
from httpx._config import DEFAULT_LIMITS
from httpx._utils import get_environment_proxies
from httpx_aiohttp import AiohttpTransport


def http_client(
    timeout_s: float, limits: httpx.Limits | None = None, max_answer_bytes: int | None = None
) -> httpx.AsyncClient:
    """An httpx client on aiohttp's transport, with `timeout_s` for connecting and each read,
    and answers refused past `max_answer_bytes` (None: no cap; RemoteProtocolError).
    Like httpx's own, it honours HTTP(S)_PROXY, NO_PROXY and SSL_CERT_FILE (an explicit
    `transport=` turns httpx's reading of the proxies off, so they are mounted here)."""
    limits = limits or DEFAULT_LIMITS

    def transport(proxy: httpx.Proxy | None = None) -> _Transport:
        return _Transport(limits=limits, proxy=proxy, max_answer_bytes=max_answer_bytes)

    proxies = {
        pattern: None if url is None else transport(httpx.Proxy(url))
        for pattern, url in get_environment_proxies().items()
    }
    return httpx.AsyncClient(transport=transport(), mounts=proxies, timeout=timeout_s)


class _Transport(AiohttpTransport):
    def __init__(self, *, max_answer_bytes: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_answer_bytes = max_answer_bytes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        deadline_s = _request_deadline_s(request)
        try:
            async with asyncio.timeout(deadline_s):
                with _named_again(request):
                    response = await super().handle_async_request(request)
        except TimeoutError as exc:  # ours: aiohttp's own timeouts are named again inside
            message = "the request and its answer's head took too long"
            raise httpx.WriteTimeout(message, request=request) from exc
        body = cast(httpx.AsyncByteStream, response.stream)  # AiohttpTransport's is async
        cap = self._max_answer_bytes
        declared = response.headers.get("content-length", "")
        if cap is not None and declared.isdigit() and int(declared) > cap:
            await body.aclose()
            raise _too_large(cap, request)
        response.stream = _Body(body, request, deadline_s, cap)
        return response


class _Body(httpx.AsyncByteStream):
    """The answer's body, its read errors named again too. Each read is bounded by aiohttp;
    the whole body by `deadline_s` too, so that a server trickling a byte at a time cannot
    hold the call forever (checked after each chunk: at most one read past it)."""

    def __init__(
        self,
        stream: httpx.AsyncByteStream,
        request: httpx.Request,
        deadline_s: float | None,
        max_bytes: int | None,
    ) -> None:
        self._stream = stream
        self._request = request
        self._ends_at = None if deadline_s is None else time.monotonic() + deadline_s
        self._max_bytes = max_bytes

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        with _named_again(self._request):
            async for chunk in self._stream:
                if self._ends_at is not None and time.monotonic() > self._ends_at:
                    raise httpx.ReadTimeout("the answer took too long", request=self._request)
                size += len(chunk)
                if self._max_bytes is not None and size > self._max_bytes:
                    raise _too_large(self._max_bytes, self._request)
                yield chunk

    async def aclose(self) -> None:
        with _named_again(self._request):
            await self._stream.aclose()


class AnswerOverCap(httpx.RemoteProtocolError):
    """An answer past the client's `max_answer_bytes`: not read further."""


def over_cap(service: str, cap: int) -> str:
    """The sentence for an answer refused at its cap, the same for every service."""
    return f"{service}'s answer is over {cap} bytes; it was not read"


def _too_large(cap: int, request: httpx.Request) -> AnswerOverCap:
    return AnswerOverCap(f"the answer is over {cap} bytes", request=request)


def _request_deadline_s(request: httpx.Request) -> float | None:
    """How long connecting, sending the request and waiting for the answer's head may take in
    all, and then the answer's body: aiohttp bounds the connecting and each read, but not the
    sending (httpx bounds each write) nor a whole answer, so an upload nobody reads or a body
    trickling in would otherwise wait forever."""
    timeouts = request.extensions.get("timeout", {})
    parts = [timeouts.get(name) for name in ("connect", "write", "read")]
    return None if None in parts else sum(parts)


@contextmanager
def _named_again(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except httpx.HTTPError as exc:
        cause = exc.__cause__
        if not isinstance(cause, aiohttp.ClientError):
            raise
        raise _httpx_error(cause, request) from cause
    except aiohttp.ClientError as exc:
        raise _httpx_error(exc, request) from exc


def _httpx_error(exc: aiohttp.ClientError, request: httpx.Request) -> httpx.HTTPError:
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return httpx.ReadError(message, request=request)
    return httpx.RemoteProtocolError(message, request=request)
