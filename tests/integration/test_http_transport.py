"""The services' HTTP client (httpx on aiohttp's transport, orchestrator/http_clients.py) against
servers that misbehave at the socket: every failure comes out as one of our errors, and RunPod's
`/run` is uncertain (it may have the job) exactly when the request may have reached it."""

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from orchestrator.errors import Permanent, SubmissionUnknown, Transient
from orchestrator.openrouter import ANSWER_MAX_BYTES as OPENROUTER_ANSWER_MAX_BYTES
from orchestrator.openrouter import OpenRouterClient, openrouter_sdk
from orchestrator.runpod import AnswerTooLarge, RunPodClient, runpod_http
from orchestrator.storage import supabase_storage
from tests.integration.tlskit import certificates

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
TIMEOUT_S = 0.5
MiB = 1024 * 1024


async def read_request(reader: asyncio.StreamReader) -> None:
    """The whole request: its head, then as many bytes as its Content-Length says."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.close()


async def garble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    await writer.drain()
    writer.close()


def answer_head(writer: asyncio.StreamWriter, length: int) -> None:
    """A 200 answer's head, for a JSON body of `length` bytes."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    writer.write(b"Content-Length: %d\r\n\r\n" % length)


async def cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    answer_head(writer, 900)
    writer.write(b'{"id": "j", "status": "COMP')
    await writer.drain()
    writer.close()


async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An answer whose body comes a byte at a time, each within the client's read timeout."""
    await read_request(reader)
    answer_head(writer, 900)
    for _ in range(900):
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(TIMEOUT_S / 3)


def endless(*, declared: bool) -> Answer:
    """An answer that never ends, as fast as the socket takes it: its length declared (1 TB),
    or chunked."""
    piece = b" " * 65536

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if declared:
            answer_head(writer, 10**12)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        while True:
            writer.write(piece if declared else b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()

    return answer


async def say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await asyncio.sleep(30)  # past the client's timeout; cancelled when the server closes


@asynccontextmanager
async def serving(answer: Answer, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """A server on 127.0.0.1 answering each connection with `answer`; its port. Its
    connections are closed however they end, and none outlives the block."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await answer(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # the client gave up first
        except asyncio.CancelledError:
            pass  # closed below, after the test: ends quietly (asyncio logs a cancelled one)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


async def outcome(answer: Answer | None, call: Callable[[str], Awaitable[object]]) -> Exception:
    """What `call(base_url)` raises against a server that answers with `answer` (None: a port
    where nothing listens)."""
    try:
        if answer is None:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            await asyncio.wait_for(call(f"http://127.0.0.1:{port}"), 10)
        else:
            async with serving(answer) as port:
                await asyncio.wait_for(call(f"http://127.0.0.1:{port}"), 10)
    except Exception as exc:  # what is under test
        return exc
    raise AssertionError("the call succeeded")


async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    body = b'{"id": "runpod-1", "status": "IN_QUEUE"}'
    answer_head(writer, len(body))
    writer.write(body)
    await writer.drain()


async def submit(base_url: str) -> object:
    async with runpod_http(timeout_s=TIMEOUT_S) as http:
        return await RunPodClient(http, f"{base_url}/v2", "ep", "key").run({"prompt": "p"})


async def poll(base_url: str) -> object:
    async with runpod_http(timeout_s=TIMEOUT_S) as http:
        return await RunPodClient(http, f"{base_url}/v2", "ep", "key").status("j")


async def poll_capped(base_url: str) -> object:
    async with runpod_http(timeout_s=TIMEOUT_S) as http:
        runpod = RunPodClient(http, f"{base_url}/v2", "ep", "key", max_answer_bytes=MiB)
        return await runpod.status("j")


async def peek_capped(base_url: str) -> object:
    """A peek with room to read on past its 64 KB: the client's cap still holds."""
    async with runpod_http(timeout_s=TIMEOUT_S) as http:
        runpod = RunPodClient(http, f"{base_url}/v2", "ep", "key", max_answer_bytes=MiB)
        return await runpod.peek("j", room=lambda: True)


async def upload(base_url: str) -> object:
    storage = supabase_storage(base_url, "service-key", "works", timeout_s=TIMEOUT_S)
    try:
        return await storage.put_png("u/w.png", b"\x89PNG" + bytes(200_000))
    finally:
        await storage.aclose()


def test_a_run_that_never_connected_is_retried_as_plain_transient():
    error = asyncio.run(outcome(None, submit))
    assert type(error) is Transient
    assert "ConnectError" in str(error)


@pytest.mark.parametrize("answer", [hang_up, garble, cut_short, trickle, say_nothing])
def test_a_run_whose_request_went_out_may_have_reached_runpod(answer):
    error = asyncio.run(outcome(answer, submit))
    assert isinstance(error, SubmissionUnknown), repr(error)


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "chunked"])
@pytest.mark.parametrize("call", [poll_capped, peek_capped])
def test_a_status_answer_over_the_cap_fails_the_work_unread(call, declared):
    """An endless answer arrives far faster than the read deadline; the cap ends it."""
    error = asyncio.run(outcome(endless(declared=declared), call))
    assert isinstance(error, AnswerTooLarge), repr(error)
    assert isinstance(error, Permanent)  # the work fails: asking again gets the same answer
    assert str(error) == (
        "RunPod's answer is over 1048576 bytes; it was not read (RUNPOD_WEBHOOK_MAX_BYTES)"
    )


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "chunked"])
def test_a_run_answer_over_its_cap_may_have_reached_runpod(declared):
    error = asyncio.run(outcome(endless(declared=declared), submit))
    assert isinstance(error, SubmissionUnknown), repr(error)
    assert "over 1048576 bytes" in str(error)


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "chunked"])
def test_storage_answering_without_end_is_cut_off_at_its_cap(declared):
    """Storage answers with a few hundred bytes; an endless answer is refused at 1 MiB, long
    before the read deadline would end it (which says ReadTimeout)."""
    error = asyncio.run(outcome(endless(declared=declared), upload))
    assert type(error) is Transient
    assert str(error) == "Supabase Storage's answer is over 1048576 bytes; it was not read"


@pytest.mark.parametrize("answer", [None, hang_up, garble, cut_short, trickle, say_nothing])
def test_a_status_read_that_fails_at_the_socket_is_transient(answer):
    error = asyncio.run(outcome(answer, poll))
    assert type(error) is Transient, repr(error)
    assert str(error).startswith("RunPod unreachable: ")


@pytest.mark.parametrize("answer", [None, hang_up, garble, cut_short, trickle, say_nothing])
def test_an_upload_that_fails_at_the_socket_is_transient(answer):
    error = asyncio.run(outcome(answer, upload))
    assert type(error) is Transient, repr(error)
    assert "service-key" not in str(error)


def test_runpod_over_tls_is_verified_before_anything_is_sent(tmp_path, monkeypatch):
    """A certificate from an unknown authority is refused while connecting (so a retry cannot
    start a second job); the same server, its authority trusted, gets the job."""
    ca, cert, key = certificates(tmp_path, "localhost")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    requests: list[None] = []

    async def counting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(None)
        await accept(reader, writer)

    async def scenario() -> tuple[object, object]:
        async with serving(counting, tls) as port:
            base = f"https://localhost:{port}"
            untrusted = await asyncio.gather(submit(base), return_exceptions=True)
            monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # read as the client is made
            return untrusted[0], await submit(base)

    refused, accepted = asyncio.run(scenario())
    assert type(refused) is Transient, repr(refused)
    assert "certificate verify failed" in str(refused.__cause__)  # what httpx's error says
    assert accepted == "runpod-1"
    assert len(requests) == 1  # only the trusted call's request was read


def test_the_environments_proxy_carries_the_calls(monkeypatch):
    """HTTP_PROXY is honoured, as by httpx's own transport: the call goes to the proxy, naming
    the service's URL in full (the service's name need not resolve here)."""
    targets: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        targets.append((await reader.readuntil(b"\r\n")).split()[1])
        await accept(reader, writer)

    async def scenario() -> object:
        async with serving(proxy) as port:
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            return await submit("http://runpod.invalid")

    assert asyncio.run(scenario()) == "runpod-1"
    assert targets == [b"http://runpod.invalid/v2/ep/run"]


def test_an_upload_nobody_reads_ends_at_the_clients_timeout():
    """A Storage that accepts the connection and never reads: the upload stalls once the
    socket's buffers are full, and still ends, as a Transient, within the client's timeout."""

    async def never_read(_reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async def big_upload(base_url: str) -> object:
        storage = supabase_storage(base_url, "service-key", "works", timeout_s=TIMEOUT_S)
        try:
            return await storage.put_png("u/w.png", b"\x89PNG" + bytes(64 * 1024 * 1024))
        finally:
            await storage.aclose()

    async def scenario() -> tuple[Exception, float]:
        started = asyncio.get_running_loop().time()
        error = await outcome(never_read, big_upload)
        return error, asyncio.get_running_loop().time() - started

    error, elapsed_s = asyncio.run(scenario())
    assert type(error) is Transient, repr(error)
    assert elapsed_s < 5  # TIMEOUT_S without a byte moving, not outcome()'s 10 s guard


async def openrouter_translate(base_url: str) -> object:
    sdk = openrouter_sdk(f"{base_url}/api/v1", "sk-secret", timeout_s=TIMEOUT_S)
    async with sdk:
        client = OpenRouterClient(sdk, translate_model="t", title_model="v")
        return await client.translate("배경을 해변으로 바꿔줘")


@pytest.mark.parametrize(
    ("answer", "first_failure"), [(None, "ConnectionRefusedError"), (say_nothing, "Timeout")]
)
def test_openrouter_says_what_failed(answer, first_failure):
    """The SDK names every failure of the socket alike ("Connection error."); the job's error
    names the first failure too, and it is a Transient (the translation falls back)."""
    error = asyncio.run(outcome(answer, openrouter_translate))
    assert type(error) is Transient, repr(error)
    assert str(error).startswith("OpenRouter unreachable: API")
    assert first_failure in str(error)
    assert "sk-secret" not in str(error)


def answering(body: bytes) -> Answer:
    """A server that answers every request with a 200 JSON `body`."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        answer_head(writer, len(body))
        writer.write(body)
        await writer.drain()

    return answer


MALFORMED = "OpenRouter sent a malformed answer"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"not json at all", MALFORMED),
        (b"[" * 500_000 + b"]" * 500_000, MALFORMED),
        (b'{"choices": "not a list"}', "OpenRouter returned no choices"),
        (b'{"choices": [{"message": {"content": {"text": "nested"}}}]}', MALFORMED),
        (b'{"choices": []}', "OpenRouter returned no choices"),
    ],
    ids=["not-json", "deeply-nested", "choices-not-a-list", "content-not-text", "no-choices"],
)
@pytest.mark.parametrize("call", ["translate", "title"])
def test_a_malformed_openrouter_answer_is_a_transient_saying_so(body, says, call):
    """Whatever the body, the call ends at once in a Transient (translation and title fall
    back), never in a RecursionError or an AttributeError from deep inside."""

    async def ask(base_url: str) -> object:
        sdk = openrouter_sdk(f"{base_url}/api/v1", "sk-secret", timeout_s=TIMEOUT_S)
        async with sdk:
            client = OpenRouterClient(sdk, translate_model="t", title_model="v")
            if call == "translate":
                return await client.translate("배경을 해변으로 바꿔줘")
            return await client.title("https://storage.example/w.png")

    error = asyncio.run(outcome(answering(body), ask))
    assert type(error) is Transient, repr(error)
    assert str(error) == says


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "chunked"])
def test_an_endless_openrouter_answer_is_cut_off_at_its_cap(declared):
    """A chat completion is a few kilobytes: an answer that never ends is not read past
    ANSWER_MAX_BYTES, and the job's error says so (a Transient: the translation falls back)."""
    error = asyncio.run(outcome(endless(declared=declared), openrouter_translate))
    assert type(error) is Transient, repr(error)
    assert (
        str(error)
        == f"OpenRouter's answer is over {OPENROUTER_ANSWER_MAX_BYTES} bytes; it was not read"
    )
