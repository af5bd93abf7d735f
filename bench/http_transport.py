"""The CPU klein serve's HTTP clients spend on the calls one job makes, on httpx's own transport
(httpcore, h11, anyio) and on aiohttp's (orchestrator/http_clients.py, under the openai SDK too:
orchestrator/openrouter.py, openrouter_sdk): the figures behind that choice.

Each call goes through the client klein serve uses, against the bench fakes (bench/fakes.py) on
127.0.0.1: RunPod's `/run` (RunPodClient.run); `/status` of a finished job, the 2.8 MB answer of a
1168x880 output (RunPodClient.status); the upload of that 2.1 MB PNG to Supabase Storage
(SupabaseStorage.put_png, storage3); an OpenRouter translation (OpenRouterClient.translate, the
openai SDK). Measured: CPU time of the calling thread per call (`time.thread_time`), one call
after another. Left out: the fakes' CPU (threads of their own), the parse of a large answer in
klein's CPU lane (another thread, the same work on either transport), TLS and the network. Rounds
alternate the transports, so that the machine's noise weighs on both alike.

    .venv/bin/python -m bench.http_transport [--calls 200] [--rounds 3]
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import openai
from storage3 import AsyncStorageClient

from bench.benchkit import calls_and_rounds, print_table
from bench.fakes import RunPodServer, SlowOpenRouter, SlowStorage, photo_png
from orchestrator.http_clients import http_client
from orchestrator.openrouter import OpenRouterClient, openrouter_sdk
from orchestrator.runpod import CONNECTIONS, RunPodClient
from orchestrator.storage import SupabaseStorage
from tests.fakes.openrouter import DEFAULT_API_KEY
from tests.fakes.storage import DEFAULT_SERVICE_KEY

PROG = "bench.http_transport"
OUTPUT_SIZE = (1168, 880)
TRANSPORTS = ("httpx", "aiohttp")
CALLS = ("RunPod /run", "RunPod /status, finished (2.8 MB)", "Storage upload (2.1 MB)")
OPENROUTER = "OpenRouter translation"
TIMEOUT_S = 30.0

Call = Callable[[], Awaitable[object]]


class Fakes:
    """The three services, started for the whole benchmark."""

    def __init__(self, stack: AsyncExitStack) -> None:
        self.png = photo_png(*OUTPUT_SIZE)
        self.runpod = stack.enter_context(RunPodServer("bench", 0.0, self.png, OUTPUT_SIZE))
        self.openrouter = stack.enter_context(SlowOpenRouter(0.0, 0.0))
        self.storage = stack.enter_context(SlowStorage(0.0))


def services_client(transport: str) -> httpx.AsyncClient:
    """RunPod's and Storage's client, as klein serve builds it on `transport`."""
    limits = httpx.Limits(max_connections=CONNECTIONS)
    if transport == "aiohttp":
        return http_client(TIMEOUT_S, limits)
    return httpx.AsyncClient(timeout=TIMEOUT_S, limits=limits)


@asynccontextmanager
async def calls(fakes: Fakes, transport: str) -> AsyncIterator[dict[str, Call]]:
    """The calls one job makes, through clients on `transport`."""
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(services_client(transport))
        runpod = RunPodClient(http, fakes.runpod.api_base, "bench", "key", status_per_10s=10**6)
        finished = await runpod.run({"prompt": "a finished job"})
        headers = {"apikey": DEFAULT_SERVICE_KEY, "Authorization": f"Bearer {DEFAULT_SERVICE_KEY}"}
        storage_http = await stack.enter_async_context(services_client(transport))
        storage = SupabaseStorage(
            AsyncStorageClient(
                f"{fakes.storage.url}/storage/v1/", headers, http_client=storage_http
            ),
            "works",
        )
        if transport == "aiohttp":
            sdk = openrouter_sdk(fakes.openrouter.base_url, DEFAULT_API_KEY)
        else:
            sdk = openai.AsyncOpenAI(
                base_url=fakes.openrouter.base_url, api_key=DEFAULT_API_KEY, max_retries=0
            )
        llm = await stack.enter_async_context(sdk)
        openrouter = OpenRouterClient(llm, translate_model="t", title_model="v")
        yield {
            CALLS[0]: lambda: runpod.run({"prompt": "p"}),
            CALLS[1]: lambda: runpod.status(finished),
            CALLS[2]: lambda: storage.put_png("bench/w.png", fakes.png),
            OPENROUTER: lambda: openrouter.translate("배경을 해변으로 바꿔줘"),
        }


async def cpu_ms(call: Call, times: int) -> float:
    """CPU ms of this thread per call, after a few unmeasured ones."""
    for _ in range(5):
        await call()
    started = time.thread_time()
    for _ in range(times):
        await call()
    return (time.thread_time() - started) / times * 1000


async def measure(times: int, rounds: int) -> dict[tuple[str, str], list[float]]:
    """Per (call, transport), one figure per round."""
    figures: dict[tuple[str, str], list[float]] = {}
    async with AsyncExitStack() as stack:
        fakes = Fakes(stack)
        for round_ in range(rounds):
            order = TRANSPORTS if round_ % 2 == 0 else TRANSPORTS[::-1]
            for transport in order:
                async with calls(fakes, transport) as each:
                    for name, call in each.items():
                        figures.setdefault((name, transport), []).append(await cpu_ms(call, times))
    return figures


def main(argv: list[str] | None = None) -> int:
    """Measure and print."""
    args = calls_and_rounds(argv, PROG, __doc__, calls=200, kind="kind", turns="transports")
    figures = asyncio.run(measure(args.calls, args.rounds))
    rows = []
    for name in (*CALLS, OPENROUTER):
        cells = []
        for transport in TRANSPORTS:
            values = figures[(name, transport)]
            cells.append(
                f"{transport} {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
            )
        rows.append((name, ", ".join(cells)))
    print_table(
        f"CPU ms per call of the calling thread, median of {args.rounds} rounds (lowest-highest)",
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
