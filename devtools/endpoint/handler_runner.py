"""Runs the project's real GPU worker (`handler.worker.Worker`) for the local endpoint.

Kept apart from the package's `__init__` so the endpoint itself imports without the handler's
dependencies (requests, websocket-client, Pillow).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from handler.config import HandlerSettings
from handler.worker import Worker

log = logging.getLogger(__name__)


class HandlerRunner:
    """A JobRunner over the real worker: one Worker per concurrent job, progress kept per job."""

    def __init__(self, settings: HandlerSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._progress: dict[str, dict[str, Any]] = {}
        self._running: dict[str, Worker] = {}
        # Built now so an unusable graph fails at start, not at the first job.
        self._idle: list[Worker] = [self._new_worker()]

    def wait_for_comfy(self, timeout_s: float | None = None) -> bool:
        """Wait, bounded (by the settings unless given), for ComfyUI to answer; log either way."""
        worker = self._take_worker()
        try:
            return worker.wait_for_comfy(timeout_s)
        finally:
            self._give_back(worker)

    def run(self, job_id: str, job_input: dict[str, Any]) -> dict[str, Any]:
        """Run one job on an idle Worker; the handler's output dict (or `{"error": ...}`)."""
        worker = self._take_worker()
        with self._lock:
            self._running[job_id] = worker
        try:
            output = worker.handle({"id": job_id, "input": job_input})
        finally:
            with self._lock:
                self._progress.pop(job_id, None)
                self._running.pop(job_id, None)
        if output.get("refresh_worker"):
            log.warning("job %s asked for a fresh worker; this one is dropped", job_id)
        else:
            self._give_back(worker)
        return output

    def stop(self, job_id: str) -> None:
        """Stop a running job (cancelled or timed out): ComfyUI's prompt is interrupted."""
        with self._lock:
            worker = self._running.get(job_id)
        if worker is not None:
            worker.stop()

    def progress(self, job_id: str) -> dict[str, Any] | None:
        """The job's latest progress report, as RunPod's progress_update would show it."""
        with self._lock:
            return self._progress.get(job_id)

    def _report(self, job: dict[str, Any], payload: dict[str, Any]) -> None:
        with self._lock:
            self._progress[str(job.get("id"))] = dict(payload)

    def _new_worker(self) -> Worker:
        return Worker.from_settings(self._settings, self._report)

    def _take_worker(self) -> Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._new_worker()

    def _give_back(self, worker: Worker) -> None:
        with self._lock:
            self._idle.append(worker)
