"""The image_url fetch against local servers on loopback: the connection goes to the address the
policy vetted (resolved once), ambiguous URLs and forbidden redirect hops never connect, error
sentences give no port-scan oracle, and one deadline holds against a trickling server.

Only 127.0.0.0/8 is ever contacted: "public" names come from an injected resolver, and the
tests that must connect allow one loopback address through the policy's allow-list.
"""

import contextlib
import io
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from handler.errors import ImageFetchError, InvalidInput
from handler.image_fetch import fetch_image
from handler.url_policy import UrlPolicy
from tests.integration.tlskit import certificates

MAX_BYTES = 1_000_000
TRICKLE_INTERVAL_S = 0.5


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Host:
    """A local HTTP server that records what reached it."""

    address: str
    port: int
    body: bytes
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


def _handler(host: Host) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host.requests.append((self.path, self.headers.get("Host", "")))
            if self.path.startswith("/redirect?to="):
                self.send_response(302)
                self.send_header("Location", self.path.removeprefix("/redirect?to="))
                self.end_headers()
            elif self.path == "/trickle":
                self._trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n", b"x" * 40)
            elif self.path == "/trickle-headers":
                self._trickle(b"", b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 40)
            elif self.path == "/missing":
                self.send_response(404)
                self.end_headers()
            else:
                self.send_response(200)
                self.send_header("Content-Length", str(len(host.body)))
                self.end_headers()
                self.wfile.write(host.body)

        def _trickle(self, head: bytes, slow: bytes) -> None:
            with contextlib.suppress(OSError):
                self.wfile.write(head)
                self.wfile.flush()
                for byte in slow:
                    time.sleep(TRICKLE_INTERVAL_S)
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextlib.contextmanager
def serve(address: str, port: int = 0, body: bytes = b"") -> Iterator[Host]:
    host = Host(address, port, body)
    server = ThreadingHTTPServer((address, port), _handler(host))
    server.daemon_threads = True
    server.block_on_close = False
    host.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield host
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def image_host() -> Iterator[Host]:
    """The legitimate image host, on 127.0.0.2 (the one address the tests' policy allows)."""
    with serve("127.0.0.2", body=png()) as host:
        yield host


@pytest.fixture
def internal_host() -> Iterator[Host]:
    """A service the worker must never reach, on 127.0.0.1."""
    with serve("127.0.0.1", body=b"internal secret") as host:
        yield host


def allowing_only(address: str, names: dict[str, str]) -> UrlPolicy:
    """A policy with an injected resolver that allows one loopback address, nothing else local."""
    return UrlPolicy(
        resolve=lambda host: [names[host]],
        allowed_networks=(ipaddress.ip_network(f"{address}/32"),),
    )


def fetch(url: str, policy: UrlPolicy, timeout_s: float = 5.0) -> bytes:
    return fetch_image(url, policy, MAX_BYTES, timeout_s)


def test_the_image_comes_from_the_vetted_address_with_the_urls_host_header(image_host):
    policy = allowing_only("127.0.0.2", {"images.test": "127.0.0.2"})
    assert fetch(f"http://images.test:{image_host.port}/a.png", policy) == image_host.body
    assert image_host.requests == [("/a.png", f"images.test:{image_host.port}")]


def test_dns_rebinding_cannot_move_the_connection(image_host):
    """The resolver answers the allowed address first and loopback after: one lookup only, and
    the connection goes to the address that was vetted."""
    answers = iter(["127.0.0.2", "127.0.0.1", "127.0.0.1"])
    lookups: list[str] = []

    def rebinding(host: str) -> list[str]:
        lookups.append(host)
        return [next(answers)]

    policy = UrlPolicy(resolve=rebinding, allowed_networks=(ipaddress.ip_network("127.0.0.2/32"),))
    with serve("127.0.0.1", image_host.port, b"internal secret") as internal:
        data = fetch(f"http://rebind.test:{image_host.port}/a.png", policy)
    assert data == image_host.body
    assert lookups == ["rebind.test"]
    assert internal.requests == []


def test_the_parser_mismatch_url_reaches_nothing(image_host, internal_host):
    """`http://127.0.0.1:P\\@images.test/` once passed the guard (host images.test) while the
    HTTP client connected to 127.0.0.1:P and returned the internal server's page."""
    policy = allowing_only("127.0.0.2", {"images.test": "127.0.0.2"})
    url = f"http://127.0.0.1:{internal_host.port}\\@images.test:{image_host.port}/x"
    with pytest.raises(InvalidInput, match="must not contain backslashes"):
        fetch(url, policy)
    assert internal_host.requests == []
    assert image_host.requests == []


@pytest.mark.parametrize("target", ["http://127.0.0.1:{port}/x", "http://internal.test:{port}/x"])
def test_a_redirect_hop_to_a_local_address_is_refused_before_connecting(
    image_host, internal_host, target
):
    names = {"images.test": "127.0.0.2", "internal.test": "127.0.0.1"}
    policy = allowing_only("127.0.0.2", names)
    hop = target.format(port=internal_host.port)
    with pytest.raises(InvalidInput, match="private or local address"):
        fetch(f"http://images.test:{image_host.port}/redirect?to={hop}", policy)
    assert internal_host.requests == []


def test_by_default_a_name_resolving_to_loopback_is_refused_and_never_contacted(internal_host):
    policy = UrlPolicy(resolve=lambda host: ["127.0.0.1"])
    with pytest.raises(InvalidInput, match="private or local address"):
        fetch(f"http://images.test:{internal_host.port}/a.png", policy)
    assert internal_host.requests == []


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.2", 0))
        return int(probe.getsockname()[1])


def test_an_open_and_a_closed_local_port_give_the_same_sentence(internal_host):
    """No port-scan oracle: a local target is refused by policy, whatever listens there."""
    policy = UrlPolicy(resolve=lambda host: ["127.0.0.1"])
    sentences = set()
    for port in (internal_host.port, closed_port()):
        with pytest.raises(InvalidInput) as caught:
            fetch(f"http://scan.test:{port}/", policy)
        sentences.add(str(caught.value))
    assert sentences == {"Invalid parameter: image_url points to a private or local address"}
    assert internal_host.requests == []


def test_a_connection_failure_names_neither_host_nor_port():
    port = closed_port()
    policy = allowing_only("127.0.0.2", {"images.test": "127.0.0.2"})
    with pytest.raises(ImageFetchError) as caught:
        fetch(f"http://images.test:{port}/a.png", policy)
    assert str(caught.value) == "Could not fetch image_url: cannot connect"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("path", ["/trickle", "/trickle-headers"])
def test_a_trickling_server_is_cut_off_at_the_deadline(image_host, path):
    """One byte every 0.5 s resets any per-read timeout; the 1.5 s deadline must still hold."""
    policy = allowing_only("127.0.0.2", {"images.test": "127.0.0.2"})
    started = time.monotonic()
    with pytest.raises(ImageFetchError) as caught:
        fetch(f"http://images.test:{image_host.port}{path}", policy, timeout_s=1.5)
    elapsed_s = time.monotonic() - started
    assert str(caught.value) == "Could not fetch image_url: timed out after 1.5 s"
    assert elapsed_s < 5


@pytest.fixture
def tls_host(tmp_path: Path) -> Iterator[tuple[Host, str, list[str]]]:
    """An https image host on 127.0.0.2 with a certificate for images.test; the CA bundle path;
    the TLS server names (SNI) clients asked for."""
    ca, cert, key = certificates(tmp_path, "images.test")
    server_names: list[str] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: server_names.append(str(name))
    host = Host("127.0.0.2", 0, png())
    server = ThreadingHTTPServer(("127.0.0.2", 0), _handler(host))
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    host.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield host, str(ca), server_names
    server.shutdown()
    server.server_close()


def test_https_to_the_vetted_address_keeps_the_name_for_sni_host_and_certificate(tls_host):
    host, ca, server_names = tls_host
    policy = allowing_only("127.0.0.2", {"images.test": "127.0.0.2"})
    url = f"https://images.test:{host.port}/a.png"
    assert fetch_image(url, policy, MAX_BYTES, 5.0, ca_certs=ca) == host.body
    assert server_names == ["images.test"]
    assert host.requests == [("/a.png", f"images.test:{host.port}")]


@pytest.mark.parametrize(("name", "trust_test_ca"), [("other.test", True), ("images.test", False)])
def test_https_with_a_certificate_for_another_name_or_from_an_unknown_ca_is_refused(
    tls_host, name, trust_test_ca
):
    host, ca, _server_names = tls_host
    policy = allowing_only("127.0.0.2", {name: "127.0.0.2"})
    with pytest.raises(ImageFetchError) as caught:
        fetch_image(
            f"https://{name}:{host.port}/a.png",
            policy,
            MAX_BYTES,
            5.0,
            ca_certs=ca if trust_test_ca else None,
        )
    assert str(caught.value) == (
        "Could not fetch image_url: the server's TLS certificate could not be verified"
    )
    assert host.requests == []


@pytest.mark.timeout(10)
def test_a_slow_name_lookup_counts_against_the_deadline():
    def slow(host: str) -> list[str]:
        time.sleep(3)
        return ["127.0.0.2"]

    policy = UrlPolicy(resolve=slow, allowed_networks=(ipaddress.ip_network("127.0.0.2/32"),))
    started = time.monotonic()
    with pytest.raises(ImageFetchError, match="timed out after 1 s"):
        fetch("http://slow-dns.test/a.png", policy, timeout_s=1.0)
    assert time.monotonic() - started < 2.5
