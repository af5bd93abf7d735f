"""The outside systems of the full-path benchmark, as protocol-level servers with realistic
latencies: RunPod's Serverless client API (`/run`, `/status`, `/cancel`, the completion webhook),
OpenRouter (translation and vision title answered after their own delays) and Supabase Storage
(each upload answered after its delay, only the PNG header kept).

Each is an aiohttp app on its own loop in a thread (devtools.background_server). Every job's
timeline (submitted, finished, first seen finished) and every `/status` call are recorded by the
RunPod fake itself, so detection delay and call rates need no clock but its own.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from PIL import Image, ImageChops
from PIL.PngImagePlugin import PngInfo

from devtools.background_server import BackgroundServer
from tests.fakes.openrouter import OpenRouterServer, is_image_request
from tests.fakes.storage import StorageServer, StoredObject

PNG_HEADER_BYTES = 33  # signature + IHDR: enough to read the stored image's size back
WEBHOOK_TIMEOUT_S = 10.0
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def photo_png(width: int, height: int) -> bytes:
    """A photo-like PNG (smooth gradients plus sensor noise, so it compresses like a photo,
    not like a flat colour), with the text chunk ComfyUI's SaveImage writes."""
    gradient = Image.linear_gradient("L").rotate(90).resize((width, height))
    channels = [
        ImageChops.add(gradient, Image.effect_noise((width, height), sigma), scale=2)
        for sigma in (10, 14, 18)
    ]
    info = PngInfo()
    info.add_text("prompt", '{"9": {"class_type": "SaveImage"}}' * 200)
    buffer = io.BytesIO()
    Image.merge("RGB", channels).save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()


def png_size(header: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR, or None when `header` is not a PNG's start."""
    if len(header) < 24 or not header.startswith(b"\x89PNG\r\n\x1a\n") or header[12:16] != b"IHDR":
        return None
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


@dataclass(frozen=True)
class Visit:
    """One request's time inside a fake: from its arrival (headers read, body not yet) to its
    answer, with every UUID its body or path named (the bench's prompts carry their work's id,
    so each request can be told to its job)."""

    kind: str
    ids: tuple[str, ...]
    start: float
    end: float


class Visits:
    """The requests a fake answered, kept from every thread (a lock, a list)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._visits: list[Visit] = []

    def add(self, kind: str, text: str, start: float) -> None:
        """A request of `kind` that arrived at `start`, answered now, naming the UUIDs in text."""
        visit = Visit(kind, tuple(UUID.findall(text)), start, time.time())
        with self._lock:
            self._visits.append(visit)

    def all(self) -> list[Visit]:
        """Every visit so far."""
        with self._lock:
            return list(self._visits)


@dataclass
class RunRecord:
    """One RunPod job's timeline (time.time() seconds) in the fake."""

    submitted_at: float
    finish_at: float
    webhook: str | None
    seen_finished_at: float | None = None
    webhook_sent_at: float | None = None  # when the orchestrator answered it with 200
    webhook_posting_at: float | None = None  # when the fake began sending it
    ids: tuple[str, ...] = ()  # the UUIDs in the /run body (the bench's prompt names its work)
    answered_at: float | None = None  # when /run was answered
    status_calls: int = 0
    cancelled: bool = False


@dataclass
class RunPodLog:
    """What the RunPod fake saw: jobs by id, every `/status` call's time, refused calls."""

    runs: dict[str, RunRecord] = field(default_factory=dict)
    status_times: list[float] = field(default_factory=list)
    output_reads: int = 0  # /status answers that carried a finished job's output
    webhook_failures: int = 0


class RunPodServer(BackgroundServer):
    """RunPod's client API for one endpoint under `/v2/{endpoint_id}`: every job runs `gpu_s`
    (give or take half of `gpu_jitter_s`, uniformly) from its `/run` (unlimited workers, no
    queue), then COMPLETED with the handler's output
    (`image`, `seed`, `prompt_id`, `width`, `height`), and its webhook, if it named one, gets
    the status object with the whole output, as RunPod sends it."""

    thread_name = "runpod-bench-fake"

    def __init__(
        self,
        endpoint_id: str,
        gpu_s: float,
        png: bytes,
        size: tuple[int, int],
        gpu_jitter_s: float = 0.0,
    ) -> None:
        super().__init__()
        self.endpoint_id = endpoint_id
        self.gpu_s = gpu_s
        self.gpu_jitter_s = gpu_jitter_s
        self._random = random.Random(11)
        self.log = RunPodLog()
        self._image_json = json.dumps(base64.b64encode(png).decode("ascii")).encode()
        self._size = size
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def api_base(self) -> str:
        """RUNPOD_API_BASE for the orchestrator."""
        return f"{self.url}/v2"

    def _routes(self) -> list[web.RouteDef]:
        base = f"/v2/{self.endpoint_id}"
        return [
            web.post(f"{base}/run", self._run),
            web.get(f"{base}/status/{{job_id}}", self._status),
            web.post(f"{base}/cancel/{{job_id}}", self._cancel),
        ]

    async def _started(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
        )

    async def _stopping(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()

    def completed_body(self, job_id: str) -> bytes:
        """The COMPLETED status object, as `/status` and the webhook carry it. The image's JSON
        is encoded once: a json.dumps of 2.8 MB per answer made the fake, not klein, the
        bottleneck."""
        width, height = self._size
        output = {"seed": 42, "prompt_id": f"bench-{job_id}", "width": width, "height": height}
        head = {"id": job_id, "status": "COMPLETED", "executionTime": 2000}
        return b"".join(
            (
                json.dumps(head)[:-1].encode(),
                b', "output": {"image": ',
                self._image_json,
                b", ",
                json.dumps(output)[1:].encode(),
                b"}",
            )
        )

    async def _run(self, request: web.Request) -> web.Response:
        now = time.time()
        text = await request.text()
        body = json.loads(text)
        job_id = f"bench-{next(self._ids):06d}"
        webhook = body.get("webhook") if isinstance(body, dict) else None
        with self._lock:
            run_s = self.gpu_s + self._random.uniform(-0.5, 0.5) * self.gpu_jitter_s
            record = RunRecord(now, now + max(0.0, run_s), webhook, ids=tuple(UUID.findall(text)))
            self.log.runs[job_id] = record
        if webhook:
            task = asyncio.create_task(self._send_webhook(job_id, webhook))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        answer = web.json_response({"id": job_id, "status": "IN_QUEUE"})
        record.answered_at = time.time()
        return answer

    async def _status(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        now = time.time()
        with self._lock:
            self.log.status_times.append(now)
            record = self.log.runs.get(job_id)
            if record is None:
                return web.json_response({"error": "job not found"}, status=404)
            record.status_calls += 1
            finished = now >= record.finish_at
            if finished and record.seen_finished_at is None:
                record.seen_finished_at = now
            self.log.output_reads += finished
        if not finished:
            return web.json_response({"id": job_id, "status": "IN_PROGRESS"})
        return web.Response(body=self.completed_body(job_id), content_type="application/json")

    async def _cancel(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        with self._lock:
            record = self.log.runs.get(job_id)
            if record is not None:
                record.cancelled = True
        return web.json_response({"id": job_id, "status": "CANCELLED"})

    async def _send_webhook(self, job_id: str, url: str) -> None:
        record = self.log.runs[job_id]
        await asyncio.sleep(max(0.0, record.finish_at - time.time()))
        assert self._session is not None
        record.webhook_posting_at = time.time()
        try:
            # A reader, not the bytes: aiohttp then writes it in chunks (and warns otherwise).
            body = io.BytesIO(self.completed_body(job_id))
            async with self._session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as answer:
                ok = answer.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        with self._lock:
            if ok:
                record.webhook_sent_at = time.time()
            else:
                self.log.webhook_failures += 1


class SlowOpenRouter(OpenRouterServer):
    """The OpenRouter fake, answering a translation after `translate_s` and a vision title
    after `title_s`."""

    def __init__(self, translate_s: float, title_s: float) -> None:
        super().__init__()
        self.translate_s = translate_s
        self.title_s = title_s
        self.visits = Visits()

    async def _chat_completions(self, request: web.Request) -> web.Response:
        start = time.time()
        text = await request.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        vision = isinstance(body, dict) and is_image_request(body)
        await asyncio.sleep(self.title_s if vision else self.translate_s)
        answer = await super()._chat_completions(request)
        self.visits.add("title" if vision else "translate", text, start)
        return answer

    def counts(self) -> tuple[int, int]:
        """Translation and title requests received so far."""
        titles = sum(1 for body in list(self.requests) if is_image_request(body))
        return len(self.requests) - titles, titles


class SlowStorage(StorageServer):
    """The Supabase Storage fake, answering each write after `delay_s` and keeping only the
    stored PNG's header (a thousand 2 MB images would otherwise live in the bench process)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.visits = Visits()

    async def _write(self, request: web.Request) -> web.Response:
        start = time.time()
        answer = await super()._write(request)
        await asyncio.sleep(self.delay_s)
        key = (request.match_info["bucket"], request.match_info["path"])
        with self._lock:
            stored = self.objects.get(key)
            if stored is not None:
                header = stored.data[:PNG_HEADER_BYTES]
                self.objects[key] = StoredObject(header, stored.content_type)
        self.visits.add("upload", request.path, start)
        return answer

    def stored_size(self, bucket: str, path: str) -> tuple[int, int] | None:
        """The stored PNG's width and height, or None when nothing (or no PNG) is there."""
        with self._lock:
            stored = self.objects.get((bucket, path))
        return None if stored is None else png_size(stored.data)
