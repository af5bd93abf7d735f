"""A real `klein serve` bounds each request's head (line and headers) in size and time: a client
sending one without end gets 431, one that never finishes it (or sends nothing) 408 at
HEAD_DEADLINE_S, each with its connection closed, not a server that keeps every byte and every
connection; a large but reasonable head still passes."""

import http.client
import socket
import time

import httpx
import pytest

from orchestrator.http_head import HEAD_DEADLINE_S, MAX_REQUEST_HEAD_BYTES


def send_head(port: int, start: bytes, filler: bytes, total: int) -> bytes:
    """Send `start`, then `filler` until `total` bytes or the server hangs up; what it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sent = 0
        try:
            sock.sendall(start)
            while sent < total:
                sock.sendall(filler)
                sent += len(filler)
            sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # it hung up: read what it said first
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


@pytest.mark.parametrize(
    ("start", "filler"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: ", b"a" * 65536),  # one header
        (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n", b"X-A: b\r\n" * 8192),  # many
        (b"GET /healthz?", b"q" * 65536),  # the request line
    ],
    ids=["one-header", "many-headers", "request-line"],
)
def test_an_endless_head_is_answered_431_and_the_connection_closed(serve, start, filler):
    klein = serve("w1")
    answer = send_head(klein.port, start, filler, total=32 * 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"65536 bytes" in answer
    assert httpx.get(f"{klein.base_url}/healthz", timeout=5).status_code == 200


def test_a_large_reasonable_head_passes(serve):
    klein = serve("w1")
    headers = {"X-Cookie-Like": "c" * (MAX_REQUEST_HEAD_BYTES // 2)}
    assert httpx.get(f"{klein.base_url}/healthz", headers=headers, timeout=5).status_code == 200


def test_a_head_that_never_ends_is_answered_408_at_its_deadline(serve):
    klein = serve("w1")
    silent = socket.create_connection(("127.0.0.1", klein.port), timeout=HEAD_DEADLINE_S + 5)
    trickling = socket.create_connection(("127.0.0.1", klein.port), timeout=HEAD_DEADLINE_S + 5)
    with silent, trickling:
        trickling.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        start = time.monotonic()
        answers = [sock.recv(65536) for sock in (silent, trickling)]
        took = time.monotonic() - start
        closed = [sock.recv(65536) for sock in (silent, trickling)]
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), answers
    assert took < HEAD_DEADLINE_S + 2
    assert closed == [b"", b""]
    assert httpx.get(f"{klein.base_url}/healthz", timeout=5).status_code == 200


def answer_to(port: int, message: bytes) -> tuple[int, bytes]:
    """The status and body the server answers to `message`, sent in one write (its head and its
    body's start come in one read)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(message)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return answer.status, answer.read()


@pytest.mark.parametrize("body_bytes", [100_000, 3_000_000], ids=["100KB", "3MB"])
def test_a_large_body_that_arrives_with_its_head_is_no_part_of_the_head(serve, body_bytes):
    """RunPod's completion webhook carries the output (megabytes): the reads that bring its head
    bring its body's start too, and only the head counts against MAX_REQUEST_HEAD_BYTES."""
    klein = serve("w1")
    body = b'{"id": "' + b"x" * body_bytes + b'"}'
    head = (
        f"POST /runpod/webhook/{'a' * 43} HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    assert answer_to(klein.port, head + body) == (404, b'{"error":"unknown webhook token"}')
