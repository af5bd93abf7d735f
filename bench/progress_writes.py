"""How often one job writes works.progress when every RunPod /status poll shows news.

A job is driven by the real flow (real PostgreSQL, the OpenRouter fake) against a RunPod /status
server whose worker report changes its sampling step many times a second, while the orchestrator
polls every `--poll-s`. A trigger logs each change of the work's `progress`; the report is the
number of writes and the shortest gap between two of them (PROGRESS_WRITE_INTERVAL_S is 1 s).

    .venv/bin/python -m bench.progress_writes [--seconds 5] [--poll-s 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from orchestrator.flow import run_job
from orchestrator.migrate import apply_migrations, migrations_dir
from tests.fakes.openrouter import OpenRouterServer
from tests.fakes.runpod import RunPodStatusServer
from tests.integration.flowkit import claim, flow_deps, insert, png_b64
from tests.pg import fresh_database, server_url

DONE = {"image": png_b64(), "seed": 1, "prompt_id": "p", "width": 320, "height": 240}
LOG_PROGRESS = [
    "CREATE TABLE progress_log (at timestamptz DEFAULT clock_timestamp(), p jsonb)",
    """CREATE FUNCTION log_progress() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         IF NEW.progress IS DISTINCT FROM OLD.progress THEN
           INSERT INTO progress_log (p) VALUES (NEW.progress);
         END IF;
         RETURN NEW;
       END $$""",
    "CREATE TRIGGER log_progress AFTER UPDATE ON works FOR EACH ROW "
    "EXECUTE FUNCTION log_progress()",
]


async def prepare(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await apply_migrations(conn, migrations_dir())
        for statement in LOG_PROGRESS:
            await conn.execute(statement)


def feed(runpod: RunPodStatusServer, stop: threading.Event) -> None:
    """A new sampling step every 10 ms, as a chatty worker would report it."""
    step = 0
    while not stop.is_set():
        step += 1
        output = {"stage": "sampling", "step": step % 40, "steps": 40}
        runpod.answer({"status": "IN_PROGRESS", "output": output})
        time.sleep(0.01)


async def drive(url: str, job_id: str, seconds: float, poll_s: float, tmp: Path) -> str:
    with RunPodStatusServer() as runpod, OpenRouterServer() as openrouter:
        overrides = {"poll_min_interval_s": poll_s, "poll_max_interval_s": poll_s}
        async with flow_deps(url, runpod, openrouter, tmp, **overrides) as deps:
            task = asyncio.create_task(run_job(await claim(deps, job_id), deps, asyncio.Event()))
            stop = threading.Event()
            feeder = threading.Thread(target=feed, args=(runpod, stop))
            feeder.start()
            await asyncio.sleep(seconds)
            stop.set()
            feeder.join()
            runpod.answer({"status": "COMPLETED", "output": DONE})
            return (await task).value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--poll-s", type=float, default=0.05)
    args = parser.parse_args()
    with fresh_database(server_url()) as url, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(prepare(url))
        job_id, _ = insert(url, {"prompt": "x", "image_base64": png_b64()})
        outcome = asyncio.run(drive(url, job_id, args.seconds, args.poll_s, Path(tmp)))
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT at, p FROM progress_log ORDER BY at").fetchall()
    writes = [at for at, progress in rows if progress is not None]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(writes)]
    polls = args.seconds / args.poll_s
    print(f"job {outcome}; {args.seconds:g} s, about {polls:.0f} polls, each with a new step")
    print(f"progress writes: {len(writes)}; cleared at the end: {len(rows) - len(writes)}")
    if gaps:
        print(f"shortest gap between writes: {min(gaps):.3f} s")


if __name__ == "__main__":
    main()
