"""The RunPod side of the worker: start-up, warm-up, and the handler function RunPod calls."""

import asyncio
import base64
import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import requests
from PIL import Image

from handler.comfy import ComfyClient, shown_url
from handler.config import HandlerSettings
from handler.contract import parse_input
from handler.errors import ComfyRejected, ComfyUnavailable, HandlerError, InvalidInput
from handler.job import JobContext, ProgressFn, edit_image
from handler.models import (
    DOCS_SECTION,
    missing_in_error,
    missing_models,
    missing_models_sentence,
    required_models,
)
from handler.run_state import RunState, preparing_payload, progress_payload, starting_payload
from handler.workflow import Workflow, load_workflow

log = logging.getLogger(__name__)

ProgressSink = Callable[[dict[str, Any], dict[str, Any]], None]  # (job, payload)
# How long a cancelled job waits for its thread to hear the stop (it checks every 0.5 s).
STOP_WAIT_S = 2.0


class ProgressThrottle:
    """Lets a progress report through when the stage or node changes or the interval has
    passed."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._last_at = float("-inf")
        self._last_node: object = object()

    def due(self, payload: dict[str, Any]) -> bool:
        """True if this payload should be sent now."""
        now = self._clock()
        node = (payload.get("stage"), payload.get("phase"), payload.get("node"))
        if node == self._last_node and now - self._last_at < self._interval_s:
            return False
        self._last_at, self._last_node = now, node
        return True


class Worker:
    """Holds the clients and the graph for the worker's life; `handle` runs one RunPod job."""

    def __init__(self, settings: HandlerSettings, workflow: Workflow, report: ProgressSink) -> None:
        self.settings = settings
        session = requests.Session()
        # ComfyUI is the worker's own: no proxy variables or ~/.netrc, which requests would
        # otherwise read again on every call (a few ms a job).
        session.trust_env = False
        self.context = JobContext(
            settings=settings,
            comfy=ComfyClient(settings.comfy_api_url, session, settings.comfy_http_timeout_s),
            workflow=workflow,
            http=requests.Session(),
        )
        self._report = report
        self._models = required_models(workflow.graph)
        self._start_lock = threading.Lock()
        self._stop = threading.Event()  # the latest job's (see _stop_for_next_job)
        self._started = False

    @classmethod
    def from_settings(cls, settings: HandlerSettings, report: ProgressSink) -> "Worker":
        """Load the configured graph (raising WorkflowError if it is unusable)."""
        workflow = load_workflow(settings.comfy_workflow, settings.comfy_workflows_dir)
        return cls(settings, workflow, report)

    def wait_for_comfy(self, timeout_s: float | None = None) -> bool:
        """Wait, bounded (COMFY_STARTUP_TIMEOUT_S by default), for ComfyUI; log either way."""
        url = shown_url(self.settings.comfy_api_url)
        timeout_s = self.settings.comfy_startup_timeout_s if timeout_s is None else timeout_s
        log.info("waiting up to %g s for ComfyUI at %s", timeout_s, url)
        if self.context.comfy.wait_until_ready(timeout_s):
            log.info("ComfyUI is ready at %s", url)
            return True
        log.error(
            "ComfyUI did not answer at %s within %g s; jobs will fail until it does "
            "(start ComfyUI there, or set COMFY_API_URL to a running ComfyUI)",
            url,
            timeout_s,
        )
        return False

    def start_up(self) -> None:
        """Once per worker (later callers wait for the first): wait for ComfyUI, report missing
        model files, warm up if asked. Bounded; a ComfyUI that never came fails the jobs."""
        with self._start_lock:
            if self._started:
                return
            if self.wait_for_comfy():
                self.check_models()
                if self.settings.comfy_warmup:
                    self.warm_up()
            self._started = True

    def check_models(self) -> None:
        """Log each model file the graph needs that ComfyUI does not list, and where it goes."""
        try:
            info = self.context.comfy.object_info()
        except ComfyUnavailable as exc:
            log.warning("could not read ComfyUI's /object_info: %s", exc)
            return
        for model in missing_models(self._models, info):
            log.error(
                "ComfyUI does not list the model file %s (%s %s): put it at %s (see %s)",
                model.file,
                model.class_type,
                model.input_name,
                model.path,
                DOCS_SECTION,
            )

    def warm_up(self) -> None:
        """Run the graph once on a small generated image so the first job skips model loading."""
        job = {"id": "warmup", "input": warmup_input()}
        result = self.handle(job)
        if "error" in result:
            log.warning("warm-up failed: %s", result["error"])
        else:
            log.info("warm-up done in %s s", result.get("timings", {}).get("total_s"))

    def _handle(self, job: dict[str, Any], stop: threading.Event) -> dict[str, Any]:
        job_id = str(job.get("id", "local"))
        throttle = ProgressThrottle(self.settings.progress_interval_s)
        node_types = self.context.workflow.node_types()

        def progress(state: RunState) -> None:
            payload = progress_payload(state, node_types)
            if throttle.due(payload):
                self._report(job, payload)

        self._report(job, preparing_payload())
        context = replace(self.context, stop=stop)
        return self._run(job_id, job.get("input"), progress, context)

    def _stop_for_next_job(self) -> threading.Event:
        """A stop of the job's own: a job that was stopped stays stopped, however soon the
        next one starts (one shared event, cleared for the next job, let a stopped job whose
        image was still downloading go on to run its whole prompt)."""
        stop = self._stop = threading.Event()
        return stop

    def handle(self, job: dict[str, Any]) -> dict[str, Any]:
        """RunPod's handler, blocking: the output dict, or {"error": sentence} so RunPod marks
        it FAILED. (The in-process local endpoint calls this one and stops it with `stop`.)"""
        return self._handle(job, self._stop_for_next_job())

    async def handle_async(self, job: dict[str, Any]) -> dict[str, Any]:
        """The handler given to RunPod: bad input is answered at once, even before ComfyUI is
        up; cancelling the task (RunPod's per-job stop, its execution timeout) interrupts the
        prompt and ends the job within about a second."""
        try:
            parse_input(job.get("input"))
        except InvalidInput as exc:
            log.warning("job %s failed: %s", job.get("id", "local"), exc)
            return {"error": str(exc)}
        if not self._started:  # once started, no thread hop per job
            # off the loop: the report may be an HTTP call to RunPod
            await asyncio.to_thread(self._report, job, starting_payload())
            await asyncio.to_thread(self.start_up)
        stop = self._stop_for_next_job()  # here, not in the thread: a stop from now on is kept
        running = asyncio.ensure_future(asyncio.to_thread(self._handle, job, stop))
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            log.info("job %s: stopped by RunPod, interrupting its prompt", job.get("id"))
            stop.set()
            await asyncio.wait({running}, timeout=STOP_WAIT_S)
            raise

    def stop(self) -> None:
        """Stop the job running now (from another thread): its prompt is interrupted, and it
        returns an error within about half a second; a job not yet queued never is."""
        self._stop.set()

    def _run(
        self, job_id: str, raw_input: object, progress: ProgressFn, context: JobContext
    ) -> dict[str, Any]:
        try:
            output = edit_image(job_id, raw_input, context, progress)
        except ComfyUnavailable as exc:
            log.error("job %s: %s", job_id, exc)
            return {"error": str(exc), "refresh_worker": True}
        except HandlerError as exc:
            message = self._explained(exc)
            log.warning("job %s failed: %s", job_id, message)
            return {"error": message}
        except Exception as exc:  # a bug of ours must still give the job a clear end
            log.exception("job %s: unexpected failure", job_id)
            return {"error": f"Processing failed: internal error ({type(exc).__name__})"}
        log.info(
            "job %s done: %sx%s %s", job_id, output["width"], output["height"], output["timings"]
        )
        return output

    def _explained(self, exc: HandlerError) -> str:
        """The job's sentence; a refusal for missing model files says where they go."""
        if isinstance(exc, ComfyRejected) and (missing := missing_in_error(self._models, str(exc))):
            return missing_models_sentence(missing)
        return str(exc)


def warmup_input() -> dict[str, Any]:
    """A tiny, quick job: a generated grey square, one step."""
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (128, 128, 128)).save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"prompt": "warm-up", "image_base64": encoded, "steps": 1, "seed": 1, "megapixels": 0.5}
