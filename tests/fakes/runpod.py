"""RunPod's client API (`/run`, `/status`, `/cancel`) for one endpoint, with `/status` answering
whatever body the test sets: a queued job, a worker's progress report (well-formed or hostile),
then the end. Point `RunPodClient` at `server.api_base` with endpoint id `server.endpoint_id`.
"""

from __future__ import annotations

import itertools
import json
import threading
from typing import Any

from aiohttp import web

from devtools.background_server import BackgroundServer


class RunPodStatusServer(BackgroundServer):
    """One endpoint whose every job shows the status body set last with `answer`."""

    thread_name = "runpod-test-server"

    def __init__(self, endpoint_id: str = "local") -> None:
        super().__init__()
        self.endpoint_id = endpoint_id
        self.runs: list[dict[str, Any]] = []
        self.cancelled: list[str] = []
        self._ids = itertools.count(1)
        self._changed = threading.Condition()
        self._body: dict[str, Any] | bytes = {"status": "IN_QUEUE"}
        self._served = 0

    @property
    def api_base(self) -> str:
        """What to give the orchestrator as RUNPOD_API_BASE."""
        return self.url + "/v2"

    def answer(self, body: dict[str, Any] | bytes) -> None:
        """From now on, `/status` answers this body (a dict is sent as JSON, bytes as they are;
        a dict without `id` gets the asked job's id)."""
        with self._changed:
            self._body, self._served = body, 0

    def wait_served(self, times: int, timeout_s: float = 10.0) -> None:
        """Block until `/status` has answered the current body `times` times (so the client has
        acted on all but the last of them)."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._served >= times, timeout_s):
                raise AssertionError(f"/status was asked {self._served} times, not {times}")

    def _routes(self) -> list[web.RouteDef]:
        base = f"/v2/{self.endpoint_id}"
        return [
            web.post(f"{base}/run", self._run),
            web.get(f"{base}/status/{{job_id}}", self._status),
            web.post(f"{base}/cancel/{{job_id}}", self._cancel),
        ]

    async def _run(self, request: web.Request) -> web.Response:
        self.runs.append(await request.json())
        return web.json_response({"id": f"rp-{next(self._ids)}", "status": "IN_QUEUE"})

    async def _status(self, request: web.Request) -> web.Response:
        with self._changed:
            body = self._body
        if isinstance(body, dict):
            body = json.dumps({"id": request.match_info["job_id"]} | body).encode()
        response = web.Response(body=body, content_type="application/json")
        with self._changed:
            self._served += 1
            self._changed.notify_all()
        return response

    async def _cancel(self, request: web.Request) -> web.Response:
        self.cancelled.append(request.match_info["job_id"])
        return web.json_response({"id": request.match_info["job_id"], "status": "CANCELLED"})
