"""Downloading a reference image: the URL policy applied where the connection is made, and one
deadline for all of it (connect, TLS, headers, every byte), however slowly the server trickles.

Each hop connects to the address the policy vetted (the URL's host kept for Host and TLS SNI and
certificate checks). Error sentences name the verdict, never the host or port that answered.
"""

import http.client
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urljoin

import certifi
import urllib3.exceptions
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.response import HTTPResponse

from handler.contract import image_url_problem, is_http_url
from handler.errors import ImageFetchError, InvalidInput
from handler.url_policy import IpAddress, Target, UrlPolicy

MAX_REDIRECTS = 3
CHUNK_BYTES = 64 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CANNOT_CONNECT = "Could not fetch image_url: cannot connect"
BROKE_OFF = "Could not fetch image_url: the connection broke off"
TLS_FAILED = "Could not fetch image_url: the server's TLS certificate could not be verified"


class Deadline:
    """One deadline for a whole download: when it passes, every watched socket is shut down, so
    a read blocked on a trickling server returns at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._ends_at = time.monotonic() + seconds
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def remaining_s(self) -> float:
        """Seconds left; raises the timeout sentence when none are."""
        remaining = self._ends_at - time.monotonic()
        if remaining <= 0 or self.expired:
            raise ImageFetchError(self.sentence())
        return remaining

    def sentence(self) -> str:
        """The error for a download that ran out of time."""
        return f"Could not fetch image_url: timed out after {self.seconds:g} s"

    def watch(self, sock: socket.socket) -> None:
        """Shut this socket down at the deadline (a duplicate is kept: TLS wrapping detaches it)."""
        with self._lock:
            self._sockets.append(sock.dup())
            if self.expired:
                _shut(self._sockets[-1])

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _WatchedHTTPConnection(HTTPConnection):
    """A connection whose socket the download's deadline can shut down."""

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self._deadline.watch(sock)
        return sock


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    """The same for https (the MRO puts HTTPSConnection's TLS set-up under the watching)."""


def fetch_image(
    url: str, policy: UrlPolicy, max_bytes: int, timeout_s: float, ca_certs: str | None = None
) -> bytes:
    """Download a URL within the byte cap and one deadline, vetting and pinning every hop
    (https certificates checked against certifi's roots unless ca_certs names a bundle)."""
    with Deadline(timeout_s) as deadline:
        try:
            return _follow(url, _Hop(policy, max_bytes, ca_certs or certifi.where()), deadline)
        except (HTTPError, http.client.HTTPException, OSError) as exc:
            raise ImageFetchError(_failure(exc, deadline)) from exc


def _failure(exc: Exception, deadline: Deadline) -> str:
    if deadline.expired:
        return deadline.sentence()
    if isinstance(exc, urllib3.exceptions.SSLError | ssl.SSLError):
        return TLS_FAILED
    return BROKE_OFF


@dataclass(frozen=True)
class _Hop:
    """What every hop of one download is held to."""

    policy: UrlPolicy
    max_bytes: int
    ca_certs: str


def _follow(url: str, hop: _Hop, deadline: Deadline) -> bytes:
    for _count in range(MAX_REDIRECTS + 1):
        target, addresses = _vet(hop.policy, url, deadline)
        connection, response = _open(target, addresses, hop.ca_certs, deadline)
        try:
            if response.status in REDIRECT_STATUSES:
                url = next_hop(url, response.headers.get("location", ""))
                continue
            if response.status != 200:
                raise ImageFetchError(f"Could not fetch image_url: HTTP {response.status}")
            return _read_capped(response, hop.max_bytes, deadline)
        finally:
            response.close()
            connection.close()
    raise ImageFetchError(f"Could not fetch image_url: more than {MAX_REDIRECTS} redirects")


def _vet(policy: UrlPolicy, url: str, deadline: Deadline) -> tuple[Target, list[IpAddress]]:
    """The policy's verdict, within the deadline: the system resolver has no timeout of its own."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-url-lookup")
    try:
        return executor.submit(policy.vet, url).result(timeout=deadline.remaining_s())
    except FutureTimeout:
        raise ImageFetchError(deadline.sentence()) from None
    finally:
        executor.shutdown(wait=False)


def _open(
    target: Target, addresses: list[IpAddress], ca_certs: str, deadline: Deadline
) -> tuple[HTTPConnection, HTTPResponse]:
    """Send the GET to the first vetted address that accepts a connection."""
    for address in addresses:
        connection = _connection(target, address, ca_certs, deadline)
        try:
            connection.request(
                "GET", target.request_uri, headers=_headers(target), preload_content=False
            )
            return connection, connection.getresponse()
        except NewConnectionError:
            connection.close()
            if deadline.expired:
                raise
        except BaseException:
            connection.close()
            raise
    raise ImageFetchError(CANNOT_CONNECT)


def _connection(
    target: Target, address: IpAddress, ca_certs: str, deadline: Deadline
) -> HTTPConnection:
    timeout_s = deadline.remaining_s()
    if target.scheme == "http":
        return _WatchedHTTPConnection(
            str(address), target.port, timeout=timeout_s, deadline=deadline
        )
    return _WatchedHTTPSConnection(
        str(address),
        target.port,
        timeout=timeout_s,
        deadline=deadline,
        server_hostname=target.host,
        cert_reqs="CERT_REQUIRED",
        ca_certs=ca_certs,
    )


def _headers(target: Target) -> dict[str, str]:
    return {
        "Host": target.host_header,
        "User-Agent": "klein-i2i-worker",
        "Accept": "image/*",
        "Accept-Encoding": "identity",
    }


def next_hop(url: str, location: str) -> str:
    """The redirect's target, held to the same form rules as the job's own URL."""
    target = urljoin(url, location)
    if not is_http_url(target):
        raise InvalidInput("Invalid parameter: image_url redirected to a non-http(s) URL")
    if problem := image_url_problem(target):
        raise InvalidInput(f"Invalid parameter: image_url redirected to a URL that {problem}")
    return target


def _read_capped(response: HTTPResponse, max_bytes: int, deadline: Deadline) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise InvalidInput(too_large(max_bytes))
    body = bytearray()
    while chunk := response.read(CHUNK_BYTES):
        body.extend(chunk)
        if len(body) > max_bytes:
            raise InvalidInput(too_large(max_bytes))
    deadline.remaining_s()  # a shut-down socket reads as an early end, not as the image
    return bytes(body)


def too_large(max_bytes: int) -> str:
    """The sentence for an image over the byte cap."""
    return f"Invalid parameter: image is larger than {max_bytes // 1_000_000} MB"
