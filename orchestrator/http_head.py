"""Bounds on each request's head (its request line and headers) for uvicorn's httptools parser,
which has none: it keeps a header value, the URL and the list of headers growing for as long as
the client sends, and waits for a head's end for ever, so one connection could fill the memory
and HTTP_MAX_CONNECTIONS silent ones could shut every client out. h11 bounds a head's size
(16 KiB) but parses bodies in Python, and the completion webhook's bodies are megabytes."""

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_REQUEST_HEAD_BYTES = 64 * 1024  # four times nginx's largest default header buffers
HEAD_DEADLINE_S = 10.0  # from the connection, or from a kept-alive connection's next request
TOO_LARGE = b'{"error": "the request\'s line and headers exceed 65536 bytes"}'
TOO_SLOW = b'{"error": "the request\'s line and headers took over 10 s to arrive"}'


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering 431 once a request's head passes
    MAX_REQUEST_HEAD_BYTES and 408 once it has taken HEAD_DEADLINE_S, and closing the
    connection then. A read is counted only when the head is still unfinished after it: a read
    that ends the head counts for nothing, so a body that came in the head's read (a webhook's
    megabytes) is never taken for head; the parser holds one read more at most (256 KiB)."""

    _head_bytes: int | None = 0  # this request's head so far; None once it is complete
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_bytes is None or self.transport.is_closing():
            return  # the head ended in this read (or none began), or the parser refused it
        self._head_bytes += len(data)
        if self._head_bytes > MAX_REQUEST_HEAD_BYTES:
            self._refuse_head(431, "Request Header Fields Too Large", TOO_LARGE)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        if self._head_deadline is None:
            self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        self._disarm_head_deadline()
        super().on_headers_complete()

    def _arm_head_deadline(self) -> None:
        self._head_deadline = self.loop.call_later(HEAD_DEADLINE_S, self._head_too_slow)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self._head_bytes is not None and not self.transport.is_closing():
            self._refuse_head(408, "Request Timeout", TOO_SLOW)

    def _refuse_head(self, status: int, reason: str, body: bytes) -> None:
        self._disarm_head_deadline()
        self.transport.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        self.transport.close()
