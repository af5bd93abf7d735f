"""The worker's own overhead per job, beside runpod-workers/worker-comfyui 5.8.5's handler.

Both handlers run the same jobs (a 1024x768 PNG, the klein edit graph, 0.5 MP out) against the
ComfyUI stand-in (a subprocess). Overhead = the handler call's wall time minus ComfyUI's own
execution time, read from the prompt's history (`execution_start` -> `execution_success`), so
ComfyUI's work is excluded and what is left is the handler's: input checks, upload, queueing,
following the websocket, fetching the output, encoding the answer.

Ours runs in this process as RunPod calls it (`Worker.handle_async` on the job dict), once with
`image_base64` and once with an `image_url` served by a local HTTP server. worker-comfyui runs in
a Python of its own (`--reference`, a folder with its `handler.py`, `src/` and a `venv/` holding
its requirements; see docs/benchmarks.md for how to make it): its input is
`{"workflow": graph, "images": [{"name", "image": base64}]}`, the graph ours would send.

    .venv/bin/python -m bench.handler_overhead --reference /tmp/wc585
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import io
import json
import pstats
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from PIL import Image, ImageDraw, ImageFilter

from bench.benchkit import BenchError, percentile, print_table, spread
from handler.config import HandlerSettings
from handler.contract import parse_input
from handler.job import graph_values
from handler.worker import Worker
from handler.workflow import Workflow

DRIVER = Path(__file__).with_name("worker_comfyui_driver.py")
PROMPT = "Replace the background with a sandy beach at sunset"
START_TIMEOUT_S = 30.0
JOB_TIMEOUT_S = 120.0
REFERENCE_NAME = "worker-comfyui 5.8.5 (base64)"


@dataclass(frozen=True)
class Sample:
    """One job: the handler's wall time and ComfyUI's execution time, in seconds."""

    wall_s: float
    execution_s: float
    cpu_s: float  # the handler process's CPU time (all its threads) during the job

    @property
    def overhead_ms(self) -> float:
        return (self.wall_s - self.execution_s) * 1000


def photo_png(size: tuple[int, int] = (1024, 768)) -> bytes:
    """A photo-like PNG (gradients, shapes, grain): compresses about as a photo does."""
    width, height = size
    base = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize(size),
            Image.radial_gradient("L").resize(size),
            Image.linear_gradient("L").rotate(90).resize(size),
        ),
    )
    draw = ImageDraw.Draw(base)
    for i in range(12):
        x, y = (i * 97) % width, (i * 61) % height
        draw.ellipse((x, y, x + 180, y + 140), fill=(40 + i * 15, 200 - i * 9, 90 + i * 11))
    grain = Image.effect_noise(size, 12).convert("RGB")
    photo = Image.blend(base.filter(ImageFilter.GaussianBlur(2)), grain, 0.08)
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    return buffer.getvalue()


@contextlib.contextmanager
def standin(root: Path) -> Iterator[str]:
    """The ComfyUI stand-in as a subprocess (no node delay); yields its URL."""
    command = [sys.executable, "-m", "devtools.comfy_standin", "--port", "0", "--root", str(root)]
    command += ["--node-delay-s", "0", "--sampler-steps", "4"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        yield _banner_url(process)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _banner_url(process: subprocess.Popen[str]) -> str:
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(START_TIMEOUT_S)
    if not found or " on " not in found[0]:
        raise BenchError(f"the ComfyUI stand-in did not start within {START_TIMEOUT_S:g} s")
    return found[0].split(" on ", 1)[1].split()[0]


@contextlib.contextmanager
def image_server(data: bytes) -> Iterator[str]:
    """A local HTTP server answering every GET with the PNG; yields its URL."""

    class Serve(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Serve)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/reference.png"
    finally:
        server.shutdown()
        server.server_close()


def execution_s(entry: dict[str, Any]) -> float:
    """ComfyUI's own time for a prompt, from its history's execution messages (ms stamps)."""
    stamps = {name: data["timestamp"] for name, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000


def history(url: str, prompt_id: str = "") -> dict[str, Any]:
    """One prompt's /history entry, or the latest prompt's (kept small: serialising the whole
    history would load the stand-in right before the next job)."""
    path = f"/history/{prompt_id}" if prompt_id else "/history?max_items=1"
    body: dict[str, Any] = requests.get(url + path, timeout=10).json()
    return body


def our_input(source: str, png_b64: str, image_url: str, seed: int) -> dict[str, Any]:
    """Our handler's job input for one image source."""
    image = {"image_base64": png_b64} if source == "base64" else {"image_url": image_url}
    return {"prompt": PROMPT, **image, "seed": seed, "steps": 4, "megapixels": 0.5}


class Ours:
    """Our handler, as RunPod calls it (handle_async; handle when profiling, so the profiler
    sees the job's thread)."""

    def __init__(self, url: str, root: Path, profile: cProfile.Profile | None) -> None:
        settings = HandlerSettings(
            comfy_api_url=url, comfy_root=root, allow_private_image_urls=True
        )
        self.worker = Worker.from_settings(settings, lambda job, payload: None)
        self.url = url
        self.profile = profile
        self.loop = asyncio.new_event_loop()
        self.count = 0

    def run(self, job_input: dict[str, Any]) -> Sample:
        self.count += 1
        job = {"id": f"bench-{self.count}", "input": job_input}
        started, cpu_started = time.perf_counter(), time.process_time()
        if self.profile is None:
            output = self.loop.run_until_complete(self.worker.handle_async(job))
        else:
            output = self.profile.runcall(self.worker.handle, job)
        wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
        if "error" in output:
            raise BenchError(f"our handler failed: {output['error']}")
        entry = history(self.url, output["prompt_id"])[output["prompt_id"]]
        return Sample(wall_s, execution_s(entry), cpu_s)

    def close(self) -> None:
        self.loop.close()


def reference_jobs(workflow: Workflow, png_b64: str, count: int) -> list[dict[str, Any]]:
    """worker-comfyui's jobs: the graph ours sends (same values), the image under a fresh name."""
    jobs = []
    for i in range(count):
        params = parse_input(our_input("base64", png_b64, "", seed=i))
        name = f"wc_{i}.png"
        graph = workflow.apply(graph_values(params, name, f"wc-{i}"))
        images = [{"name": name, "image": png_b64}]
        jobs.append({"id": f"wc-{i}", "input": {"workflow": graph, "images": images}})
    return jobs


class Reference:
    """worker-comfyui's handler in its own Python, one job per line (worker_comfyui_driver.py)."""

    def __init__(self, checkout: Path, url: str) -> None:
        python = checkout / "venv" / "bin" / "python"
        if not python.exists():
            raise BenchError(f"no {python}: make worker-comfyui's venv first (docs/benchmarks.md)")
        host = url.removeprefix("http://")
        command = [str(python), str(DRIVER), str(checkout), host]
        self.url = url
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def run(self, job: dict[str, Any]) -> Sample:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(json.dumps(job) + "\n")
        stdin.flush()
        ready, _, _ = select.select([stdout], [], [], JOB_TIMEOUT_S)
        if not ready:
            raise BenchError(f"worker-comfyui gave no answer within {JOB_TIMEOUT_S:g} s")
        result = json.loads(stdout.readline() or "null") or {
            "error": "its process ended",
            "files": [],
        }
        if result["error"] or not result["files"]:
            raise BenchError(f"worker-comfyui failed: {result['error']}")
        entry = self._entry(result["files"][0])
        return Sample(result["wall_s"], execution_s(entry), result["cpu_s"])

    def _entry(self, filename: str) -> dict[str, Any]:
        """The history entry whose output is this file."""
        for entry in history(self.url).values():
            for output in entry["outputs"].values():
                if any(image["filename"] == filename for image in output.get("images", [])):
                    return entry
        raise BenchError(f"no history entry wrote {filename}")

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


def summary(name: str, runs: list[list[Sample]]) -> list[tuple[str, str]]:
    """p50/p95 overhead (median and spread over the runs), the handler process's CPU time (less
    sensitive to other load on the machine) and the execution time excluded."""
    p50 = [percentile([s.overhead_ms for s in run], 0.5) for run in runs]
    p95 = [percentile([s.overhead_ms for s in run], 0.95) for run in runs]
    execution = [statistics.median(s.execution_s * 1000 for s in run) for run in runs]
    cpu = [statistics.median(s.cpu_s * 1000 for s in run) for run in runs]
    return [
        (f"{name}: overhead p50 ms", spread(p50)),
        (f"{name}: overhead p95 ms", spread(p95)),
        (f"{name}: handler CPU p50 ms", spread(cpu)),
        (f"{name}: ComfyUI execution p50 ms (excluded)", spread(execution)),
    ]


def one_run(
    args: argparse.Namespace, png: bytes, profile: cProfile.Profile | None
) -> dict[str, list[Sample]]:
    """Every handler and source on a fresh stand-in, job by job in turn (rotating which goes
    first), warm-up jobs dropped."""
    png_b64 = base64.b64encode(png).decode("ascii")
    results: dict[str, list[Sample]] = {}
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="klein-overhead-")))
        image_url = stack.enter_context(image_server(png))
        url = stack.enter_context(standin(scratch / "comfy"))
        ours = Ours(url, scratch / "comfy", profile)
        stack.callback(ours.close)
        reference = None
        if args.reference is not None:
            reference = Reference(args.reference, url)
            stack.callback(reference.close)
            jobs = reference_jobs(ours.worker.context.workflow, png_b64, args.warmup + args.jobs)
        for i in range(args.warmup + args.jobs):
            turns: list[tuple[str, Callable[[], Sample]]] = [
                (f"ours ({source})", partial(ours.run, our_input(source, png_b64, image_url, i)))
                for source in ("base64", "url")
            ]
            if reference is not None:
                turns.append((REFERENCE_NAME, partial(reference.run, jobs[i])))
            # Each handler goes first in turn: none always follows the same one.
            shift = i % len(turns)
            row = {name: turn() for name, turn in turns[shift:] + turns[:shift]}
            if i >= args.warmup:
                for name, sample in row.items():
                    results.setdefault(name, []).append(sample)
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--jobs", type=int, default=29, help="measured jobs per handler (default 29)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="jobs run first and not counted")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs; the table shows median (min-max)"
    )
    parser.add_argument(
        "--reference", type=Path, help="worker-comfyui checkout with venv/ (omit: ours only)"
    )
    parser.add_argument(
        "--profile", type=Path, help="cProfile our handler's jobs into this file and print the top"
    )
    return parser.parse_args(argv)


def print_profile(profile: cProfile.Profile, path: Path, top: int = 25) -> None:
    profile.dump_stats(path)
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    png = photo_png()
    profile = cProfile.Profile() if args.profile else None
    runs: dict[str, list[list[Sample]]] = {}
    try:
        for _ in range(args.repeat):
            for name, samples in one_run(args, png, profile).items():
                runs.setdefault(name, []).append(samples)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = [
        (
            "input",
            f"1024x768 PNG, {len(png) / 1e6:.2f} MB; 0.5 MP out; "
            f"{args.jobs} jobs after {args.warmup} warm-up",
        )
    ]
    for name, name_runs in runs.items():
        rows += summary(name, name_runs)
    print_table(f"handler overhead (wall minus ComfyUI execution), {args.repeat} run(s)", rows)
    if profile is not None:
        print_profile(profile, args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
