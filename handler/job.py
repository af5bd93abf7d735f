"""One job's life in the worker: input -> reference image -> graph -> ComfyUI -> output image."""

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from socket import SHUT_RDWR
from typing import Any

import pybase64
import requests
import websocket

from handler.comfy import ComfyClient
from handler.config import HandlerSettings
from handler.contract import JobParams, parse_input, unknown_fields
from handler.contract.errors import InvalidInput
from handler.contract.images import VerifiedImage, check_structure
from handler.errors import ComfyRejected, InvalidOutput, JobStopped, JobTimedOut
from handler.reference_image import ImageLimits, load_reference_image
from handler.run_state import Phase, RunState, fold, output_images, state_from_history
from handler.url_policy import IpNetwork, Resolver, UrlPolicy, system_resolver
from handler.workflow import Workflow

log = logging.getLogger(__name__)

ProgressFn = Callable[[RunState], None]
Saved = list[Mapping[str, Any]]  # image records (`filename`, `subfolder`, `type`)
IDLE_CHECK_S = 5.0  # a silent socket this long makes us look at /history (missed messages)
STOP_CHECK_S = 0.5  # how soon a stop request is noticed while the socket is silent
NO_OUTPUT = "No output image from SaveImage"


@dataclass(frozen=True)
class JobContext:
    """What a job needs from the worker: settings, clients and the loaded graph."""

    settings: HandlerSettings
    comfy: ComfyClient
    workflow: Workflow
    http: requests.Session  # not used for reference images: their fetch pins its own connection
    resolve: Resolver = system_resolver
    allowed_networks: tuple[IpNetwork, ...] = ()
    # Set from another thread to stop the running job (the local endpoint's /cancel).
    stop: threading.Event = field(default_factory=threading.Event)


@dataclass
class Timings:
    """Seconds spent in each stage, returned as diagnostics."""

    marks: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a block under a name."""
        begun = time.monotonic()
        try:
            yield
        finally:
            self.marks[name] = round(time.monotonic() - begun, 3)

    def report(self) -> dict[str, float]:
        """Every stage plus the total."""
        return {**self.marks, "total_s": round(time.monotonic() - self.started, 3)}


def safe_token(job_id: str) -> str:
    """A file-name-safe form of the job id, unique per job, for uploads and output prefixes."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "", job_id)[:64]
    return f"{cleaned or 'job'}-{uuid.uuid4().hex[:8]}"


def image_limits(settings: HandlerSettings) -> ImageLimits:
    """The reference image caps from the settings."""
    return ImageLimits(
        max_bytes=settings.image_max_bytes,
        max_pixels=settings.image_max_pixels,
        fetch_timeout_s=settings.image_fetch_timeout_s,
    )


def url_policy(ctx: JobContext) -> UrlPolicy:
    """The address rule every image_url hop is held to."""
    return UrlPolicy(
        resolve=ctx.resolve,
        allow_private=ctx.settings.allow_private_image_urls,
        allowed_networks=ctx.allowed_networks,
    )


def graph_values(params: JobParams, image_name: str, token: str) -> dict[str, object]:
    """The value for each binding name."""
    return {
        "image": image_name,
        "prompt": params.prompt,
        "seed": params.seed,
        "steps": params.steps,
        "cfg": params.cfg,
        "megapixels": params.megapixels,
        "filename_prefix": f"klein/{token}",
    }


def edit_image(
    job_id: str, raw_input: object, ctx: JobContext, progress: ProgressFn
) -> dict[str, Any]:
    """Edit one job's image on ComfyUI; the output dict, or a HandlerError carrying the sentence."""
    timings = Timings()
    deadline = timings.started + ctx.settings.comfy_job_timeout_s
    params = parse_input(raw_input)
    if isinstance(raw_input, Mapping) and (ignored := unknown_fields(raw_input)):
        log.info("job %s: ignoring unknown input fields %s", job_id, ignored)
    with timings.stage("image_s"):
        image = load_reference_image(params.image, image_limits(ctx.settings), url_policy(ctx))
    _check_stop(ctx)  # stopped while its image came: nothing reaches ComfyUI
    token = safe_token(job_id)
    files: list[Path] = []
    try:
        with timings.stage("upload_s"):
            uploaded = ctx.comfy.upload_image(image.png, f"klein_{token}.png")
        files.append(Path("input") / uploaded)
        graph = ctx.workflow.apply(graph_values(params, uploaded, token))
        with timings.stage("comfy_s"):
            prompt_id, saved = execute(ctx, graph, deadline, progress)
            record, data = fetch_output(ctx, prompt_id, deadline, saved)
        files.append(Path("output") / str(record.get("subfolder", "")) / str(record["filename"]))
    finally:
        remove_local_files(ctx.settings.comfy_root, files)
    result = checked_output(data, ctx.settings.image_max_pixels)
    return {
        "image": pybase64.b64encode(result.data).decode("ascii"),
        "seed": params.seed,
        "prompt_id": prompt_id,
        "width": result.width,
        "height": result.height,
        "timings": timings.report(),
    }


def execute(
    ctx: JobContext, graph: Mapping[str, Any], deadline: float, progress: ProgressFn
) -> tuple[str, Saved]:
    """Queue the graph and follow it to the end; the prompt id of a successful run, and the images
    the output node reported on the websocket (empty if none was heard)."""
    client_id = uuid.uuid4().hex
    socket = ctx.comfy.open_socket(client_id, timeout_s=ctx.settings.comfy_http_timeout_s)
    try:
        _check_stop(ctx)  # stopped during the upload: no prompt is queued
        prompt_id = ctx.comfy.queue_prompt(graph, client_id)
        progress(RunState(prompt_id))  # queued: ComfyUI says nothing more until it starts it
        try:
            with _cut_at_deadline_or_stop(ctx, socket, deadline):
                state, saved = follow(ctx, socket, prompt_id, deadline, progress)
        except (JobTimedOut, JobStopped):
            ctx.comfy.interrupt(prompt_id)
            raise
    finally:
        with suppress(Exception):
            socket.close()
    if state.phase is not Phase.SUCCEEDED:
        raise ComfyRejected(f"Processing failed: {state.error}")
    return prompt_id, saved


@contextmanager
def _cut_at_deadline_or_stop(
    ctx: JobContext, socket: websocket.WebSocket, deadline: float
) -> Iterator[None]:
    """Shut the websocket down at the job's deadline or its stop, whatever a read waits for:
    a frame's header names its length, and a read waits for all of it, so a frame trickled in
    (or one of absurd length) held the job past both. The read then fails, and `follow`'s
    fallback to /history ends the job as timed out or stopped."""
    finished = threading.Event()

    def watch() -> None:
        while not finished.wait(min(STOP_CHECK_S, max(0.0, deadline - time.monotonic()))):
            if ctx.stop.is_set() or time.monotonic() >= deadline:
                if (raw := socket.sock) is not None:
                    with suppress(OSError):
                        raw.shutdown(SHUT_RDWR)
                return

    watcher = threading.Thread(target=watch, name="comfy-socket-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        finished.set()


def _check_stop(ctx: JobContext) -> None:
    if ctx.stop.is_set():
        raise JobStopped("Stopped: the job was cancelled before its prompt was queued")


def _check_deadline(ctx: JobContext, deadline: float) -> float:
    if ctx.stop.is_set():
        raise JobStopped("Stopped: the job was cancelled; the prompt was interrupted")
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        seconds = f"{ctx.settings.comfy_job_timeout_s:g}"
        raise JobTimedOut(
            f"Timed out after {seconds} s waiting for ComfyUI; the prompt was interrupted"
        )
    return remaining


def follow(
    ctx: JobContext,
    socket: websocket.WebSocket,
    prompt_id: str,
    deadline: float,
    progress: ProgressFn,
) -> tuple[RunState, Saved]:
    """Fold websocket messages until the prompt ends, keeping what the output node saved; fall
    back to /history if the socket drops."""
    state = RunState(prompt_id)
    saved: Saved = []
    heard_at = time.monotonic()
    while not state.done:
        socket.settimeout(min(_check_deadline(ctx, deadline), STOP_CHECK_S))
        try:
            raw = socket.recv()
        except websocket.WebSocketTimeoutException:
            if time.monotonic() - heard_at >= IDLE_CHECK_S:
                state = _merge(state, state_from_history(prompt_id, ctx.comfy.history(prompt_id)))
                heard_at = time.monotonic()
            continue
        except (websocket.WebSocketException, OSError, UnicodeDecodeError):  # (no UTF-8 check)
            log.warning("prompt %s: websocket dropped, polling /history", prompt_id)
            return poll_history(ctx, prompt_id, deadline, progress), []
        heard_at = time.monotonic()
        if isinstance(raw, str):
            message = comfy_message(raw)
            saved = saved_images(message, prompt_id, ctx.workflow.output_node) or saved
            new_state = fold(state, message)
            if new_state != state:
                progress(new_state)
            state = new_state
    return state, saved


def comfy_message(raw: str) -> dict[str, Any]:
    """A websocket text frame as ComfyUI's message object; anything else is no message of ours
    (ignored, as messages of other prompts are)."""
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return message if isinstance(message, dict) else {}


def saved_images(message: object, prompt_id: str, node_id: str) -> Saved:
    """The images our output node saved, when the message is its `executed` for our prompt
    (ComfyUI sends none for a cached node: then /history has them)."""
    if not isinstance(message, Mapping) or message.get("type") != "executed":
        return []
    data = message.get("data")
    if not isinstance(data, Mapping) or data.get("prompt_id") != prompt_id:
        return []
    if node_id not in (data.get("node"), data.get("display_node")):
        return []
    return output_images({"outputs": {node_id: data.get("output")}}, node_id)


def _merge(current: RunState, from_history: RunState) -> RunState:
    return from_history if from_history.done else current


def poll_history(
    ctx: JobContext, prompt_id: str, deadline: float, progress: ProgressFn
) -> RunState:
    """Wait for the prompt through `/history` alone, with the job's deadline."""
    interval_s = ctx.settings.comfy_poll_interval_s
    while True:
        state = state_from_history(prompt_id, ctx.comfy.history(prompt_id))
        if state.done:
            progress(state)
            return state
        ctx.stop.wait(min(interval_s, _check_deadline(ctx, deadline)))
        interval_s = min(interval_s * 1.5, 5.0)


def fetch_output(
    ctx: JobContext, prompt_id: str, deadline: float, saved: Saved
) -> tuple[Mapping[str, Any], bytes]:
    """The saved output image's record and bytes: as the websocket reported it, else from
    /history (which can lag the websocket briefly)."""
    if saved:
        return saved[0], ctx.comfy.view(saved[0], deadline)
    while (entry := ctx.comfy.history(prompt_id)) is None:
        ctx.stop.wait(min(ctx.settings.comfy_poll_interval_s, _check_deadline(ctx, deadline)))
    images = output_images(entry, ctx.workflow.output_node)
    if not images:
        raise InvalidOutput(NO_OUTPUT)
    return images[0], ctx.comfy.view(images[0], deadline)


def checked_output(data: bytes, max_pixels: int) -> VerifiedImage:
    """ComfyUI's output, checked as a whole PNG without decoding its pixels (its header, every
    chunk's CRC): the orchestrator decodes it once when it stores it."""
    try:
        result = check_structure(data, max_pixels)
    except InvalidInput:
        raise InvalidOutput("ComfyUI returned a file that is not a readable PNG") from None
    if result.format != "PNG":
        raise InvalidOutput(f"ComfyUI returned a {result.format} file, not a PNG")
    return result


def remove_local_files(comfy_root: Path | None, relative_paths: list[Path]) -> None:
    """Delete the job's input and output files when ComfyUI's folder is on this machine."""
    if comfy_root is None:
        return
    root = comfy_root.resolve()
    for relative in relative_paths:
        path = (root / relative).resolve()
        if root not in path.parents:
            log.warning("not removing %s: outside %s", relative, root)
            continue
        with suppress(FileNotFoundError):
            path.unlink()
