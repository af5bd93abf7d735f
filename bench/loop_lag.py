"""How long the orchestrator's event loop stalls when many jobs finish at once.

16 jobs (by default) are claimed and submitted to the local RunPod endpoint, whose runner holds
them until all are running and then lets them finish together, each with a 2 MP PNG that carries
ComfyUI-style text chunks. `klein serve`'s own Orchestrator (all four loops, real PostgreSQL, the
OpenRouter fake for the titles, local storage) then decodes, verifies, stores and titles them. A
ticker on the same loop measures every stall: the heartbeat, the webhooks and every other job
wait exactly that long. Left out: translation (the prompts are English), RunPod's queue and the
network (everything is on 127.0.0.1).

    .venv/bin/python -m bench.loop_lag [--jobs 16] [--megapixels 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import threading
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
import openai
import psycopg

from bench.benchkit import (
    DEFAULT_SERVER,
    BenchError,
    insert_jobs,
    new_jobs,
    percentile,
    print_table,
    scratch_database,
    spread,
)
from bench.fakes import photo_png
from devtools.endpoint.config import EndpointConfig
from devtools.endpoint.server import EndpointServer
from orchestrator.db import Database
from orchestrator.metrics import Metrics
from orchestrator.openrouter import OpenRouterClient
from orchestrator.runpod import RunPodClient
from orchestrator.service import Orchestrator
from orchestrator.settings import Settings
from orchestrator.storage import LocalStorage
from tests.fakes.openrouter import OpenRouterServer

try:  # the bench runs on the code before the CPU lane (and FlowDeps' move) too
    from orchestrator.cpu import CpuLane
    from orchestrator.deps import FlowDeps
except ImportError:  # pragma: no cover
    from orchestrator.flow import FlowDeps  # type: ignore[attr-defined,no-redef]


def lane_kwargs(lane: Any) -> dict[str, Any]:
    """`cpu=lane` where the code has a CPU lane."""
    return {} if lane is None else {"cpu": lane}


TICK_S = 0.005


class TimedRunPod(RunPodClient):
    """RunPod's client, noting when each `/run` was sent (to measure the submission window)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent_at: dict[str, float] = {}

    async def run(self, *args: Any, **kwargs: Any) -> str:
        sent_at = time.time()
        runpod_id = await super().run(*args, **kwargs)
        self.sent_at[runpod_id] = sent_at
        return runpod_id


def submission_windows_ms(url: str, sent_at: dict[str, float]) -> list[float]:
    """For each job: from sending `/run` to its id being recorded (the row's submitted_at is
    the recording transaction's start; its commit follows within a millisecond or two)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT runpod_job_id, extract(epoch FROM submitted_at) FROM generation_jobs"
        ).fetchall()
    return [(float(at) - sent_at[rid]) * 1000 for rid, at in rows if rid in sent_at]


def output_png(megapixels: float) -> str:
    """A photo-like PNG (smooth gradients plus sensor noise) of about `megapixels`, base64,
    with the text chunks ComfyUI's SaveImage writes."""
    width = int((megapixels * 1_000_000 * 4 / 3) ** 0.5)
    return base64.b64encode(photo_png(width, int(width * 3 / 4))).decode("ascii")


class TogetherRunner:
    """The first job (the warm-up) finishes at once; the others are held until `jobs` of them
    are running, then all finish together."""

    def __init__(self, jobs: int, image: str) -> None:
        self._barrier = threading.Barrier(jobs, timeout=60)
        self._image = image
        self._warmed_up = threading.Event()

    def run(self, job_id: str, job_input: dict[str, Any]) -> dict[str, Any]:
        if self._warmed_up.is_set():
            self._barrier.wait()
        self._warmed_up.set()
        return {"image": self._image, "seed": job_input.get("seed", 1), "prompt_id": job_id}


async def ticker(stalls: list[float], stop: asyncio.Event) -> None:
    """Record how late each short sleep wakes up: the loop's stalls."""
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(TICK_S)
        stalls.append(time.perf_counter() - start - TICK_S)


def remote_services(jobs: int, image: str, urls: Queue[tuple[str, str, str]], stop: Event) -> None:
    """RunPod (the local endpoint and its runner) and OpenRouter, in a process of their own: in
    production they are other machines, so their CPU must not count as the orchestrator's."""
    runner = TogetherRunner(jobs, image)
    config = EndpointConfig(endpoint_id="local", workers=jobs)
    with EndpointServer(config, runner) as endpoint, OpenRouterServer() as llm_server:
        urls.put((endpoint.api_base, llm_server.base_url, llm_server.api_key))
        stop.wait(300)


async def one_run(url: str, jobs: int, image: str, storage: Path) -> dict[str, float]:
    """Run `jobs` jobs to completion under the ticker; the stalls and the wall time."""
    context = multiprocessing.get_context("fork")
    urls: Queue[tuple[str, str, str]] = context.Queue()
    stop = context.Event()
    services = context.Process(target=remote_services, args=(jobs, image, urls, stop))
    services.start()
    try:
        return await drive(url, jobs, storage, *urls.get(timeout=30))
    finally:
        stop.set()
        services.join(10)


async def drive(url: str, jobs: int, storage: Path, api_base: str, *llm: str) -> dict[str, float]:
    """The orchestrator of `klein serve`, with the ticker beside it, until all jobs complete."""
    settings = Settings(
        database_url=url,
        runpod_api_base=api_base,
        runpod_endpoint_id="local",
        max_in_flight=jobs,
        poll_min_interval_s=0.05,
        poll_max_interval_s=0.1,
        heartbeat_interval_s=1.0,
    )
    db = Database(url, max_size=8)
    await db.open()
    llm_base_url, llm_key = llm
    client = openai.AsyncOpenAI(base_url=llm_base_url, api_key=llm_key, max_retries=0)
    async with httpx.AsyncClient(timeout=30) as http, client:
        threads = getattr(settings, "cpu_threads", None)  # None: code before the CPU lane
        lane = CpuLane(threads) if threads is not None else None
        deps = FlowDeps(
            db=db,
            runpod=(runpod := TimedRunPod(http, api_base, "local", None, **lane_kwargs(lane))),
            openrouter=OpenRouterClient(client, translate_model="t", title_model="v"),
            storage=LocalStorage(storage, "works", "http://127.0.0.1:8080"),
            settings=settings,
            metrics=Metrics(),
            **lane_kwargs(lane),
        )
        orchestrator = Orchestrator(deps, url)
        loops = asyncio.create_task(orchestrator.run())
        # One job first, alone: the first call of each client pays one-time imports and
        # connection set-up, which is not what this measures.
        insert(url, 1)
        await wait_all_completed(url, 1)
        stalls: list[float] = []
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stalls, stop))
        start = time.perf_counter()
        insert(url, jobs)
        await wait_all_completed(url, jobs + 1)
        took_s = time.perf_counter() - start
        stop.set()
        orchestrator.stop()
        await asyncio.gather(tick, loops)
    await db.close()
    return {
        "max_stall_ms": max(stalls) * 1000,
        "p99_stall_ms": percentile(stalls, 0.99) * 1000,
        "wall_s": took_s,
        "window_p50_ms": percentile(windows := submission_windows_ms(url, runpod.sent_at), 0.5),
        "window_max_ms": max(windows),
    }


def insert(url: str, count: int) -> None:
    """`count` jobs as the web app inserts them, each with a reference image URL."""
    with psycopg.connect(url) as conn:
        reference = {"prompt": "make it red", "image_url": "https://example.com/a.png"}
        insert_jobs(conn, new_jobs(count), reference)


async def wait_all_completed(url: str, jobs: int, timeout_s: float = 120) -> None:
    """Until `jobs` works are completed, watched from a thread so that the watching does not
    stall the loop it measures; BenchError with the states otherwise."""
    await asyncio.to_thread(_wait_all_completed, url, jobs, timeout_s)


def _wait_all_completed(url: str, jobs: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    counts: dict[str, int] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            rows = conn.execute("SELECT status, count(*) FROM works GROUP BY status").fetchall()
            counts = {str(status): int(count) for status, count in rows}
            if counts.get("completed", 0) == jobs:
                return
            if counts.get("failed"):
                raise BenchError(f"some works failed: {counts}")
            time.sleep(0.05)
    raise BenchError(f"not all works completed in {timeout_s} s: {counts}")


def main() -> None:
    """Parse the flags, run, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--megapixels", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--server", default=DEFAULT_SERVER)
    args = parser.parse_args()
    image = output_png(args.megapixels)
    runs = []
    for _ in range(args.repeat):
        with scratch_database(args.server) as url, TemporaryDirectory() as storage:
            runs.append(asyncio.run(one_run(url, args.jobs, image, Path(storage))))
    print_table(
        f"{args.jobs} jobs finishing at once, {args.megapixels:g} MP PNG outputs "
        f"({len(image) * 3 // 4 // 1000} KB), {args.repeat} run(s)",
        [
            ("worst event-loop stall (ms)", spread([r["max_stall_ms"] for r in runs])),
            ("p99 event-loop stall (ms)", spread([r["p99_stall_ms"] for r in runs])),
            ("all completed after (s)", spread([r["wall_s"] for r in runs])),
            ("submission window p50 (ms)", spread([r["window_p50_ms"] for r in runs])),
            ("submission window max (ms)", spread([r["window_max_ms"] for r in runs])),
        ],
    )


if __name__ == "__main__":
    main()
