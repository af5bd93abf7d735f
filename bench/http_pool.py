"""What an httpx request costs as its pool keeps more idle connections: the figure behind
orchestrator.runpod's KEPT_ALIVE.

A local aiohttp server answers a small `/status`-like JSON at once. For each size of the kept
pool, a burst of CONNECTIONS requests first fills it with idle connections; then requests are
sent one after another (the steady case: one job's poll at a time), and in bursts of three
times CONNECTIONS behind the same semaphore RunPodClient uses (the 1,000-jobs case). Reported:
CPU per request of this process, client and server together (the server's share is the same
for every pool size). Left out: TLS and the network, which make every new connection dearer
than on 127.0.0.1, so that keeping too few costs more there than here.

    .venv/bin/python -m bench.http_pool [--sizes 1,4,8,16,32,64]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
from aiohttp import web

from bench.benchkit import print_table
from orchestrator.runpod import CONNECTIONS

SEQUENTIAL = 1500
BURSTS = 10


async def status(_: web.Request) -> web.Response:
    """A job still running, as RunPod's `/status` says it."""
    return web.json_response({"id": "bench", "status": "IN_PROGRESS"})


async def cpu_per_request(url: str, kept: int) -> tuple[float, float]:
    """(sequential, burst) CPU ms per request with `kept` idle connections allowed."""
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=kept)
    turns = asyncio.Semaphore(CONNECTIONS)
    async with httpx.AsyncClient(limits=limits) as http:

        async def one() -> None:
            async with turns:
                (await http.get(url)).raise_for_status()

        await asyncio.gather(*(one() for _ in range(CONNECTIONS)))
        started = time.process_time()
        for _ in range(SEQUENTIAL):
            await one()
        sequential = (time.process_time() - started) / SEQUENTIAL
        started = time.process_time()
        for _ in range(BURSTS):
            await asyncio.gather(*(one() for _ in range(3 * CONNECTIONS)))
        burst = (time.process_time() - started) / (BURSTS * 3 * CONNECTIONS)
    return sequential * 1000, burst * 1000


async def measure(sizes: list[int]) -> list[tuple[str, str]]:
    """One row per pool size."""
    app = web.Application()
    app.router.add_get("/status", status)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rows = []
    try:
        for kept in sizes:
            sequential, burst = await cpu_per_request(f"http://127.0.0.1:{port}/status", kept)
            rows.append(
                (f"{kept} kept alive", f"{sequential:.2f} ms one by one, {burst:.2f} ms in bursts")
            )
    finally:
        await runner.cleanup()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Measure and print."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.http_pool", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--sizes", default="1,4,8,16,32,64", help="idle connections kept, comma-separated"
    )
    sizes = [int(size) for size in parser.parse_args(argv).sizes.split(",")]
    rows = asyncio.run(measure(sizes))
    print_table(f"CPU per request, client and server (pool of {CONNECTIONS} at once)", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
