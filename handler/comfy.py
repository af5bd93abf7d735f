"""The ComfyUI HTTP and websocket API, as one small client over an injected requests session.

Every call has a timeout; a connection failure becomes ComfyUnavailable (the worker is sick),
a refused graph becomes ComfyRejected naming the node type.
"""

import logging
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
import websocket

from handler.errors import ComfyRejected, ComfyUnavailable
from handler.run_state import describe_rejection

log = logging.getLogger(__name__)


# An output image read from /view: RunPod returns at most 20 MB of result, which is about 15 MB
# of PNG in base64, so anything past this could not be returned anyway (and an endless answer
# would fill the worker's memory).
VIEW_MAX_BYTES = 32 * 1024 * 1024
VIEW_CHUNK_BYTES = 1024 * 1024


class ComfyClient:
    """Talks to one ComfyUI server."""

    def __init__(self, base_url: str, session: requests.Session, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._timeout_s = timeout_s

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            return self._session.request(
                method, self.base_url + path, timeout=self._timeout_s, **kwargs
            )
        except requests.RequestException as exc:
            raise ComfyUnavailable(unreachable(self.base_url)) from exc

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code >= 500:
            raise ComfyUnavailable(f"ComfyUI answered HTTP {response.status_code} on {path}")
        try:
            return response.json()
        except ValueError as exc:
            raise ComfyUnavailable(f"ComfyUI sent a non-JSON answer on {path}") from exc

    def is_ready(self) -> bool:
        """True when ComfyUI answers `/system_stats`."""
        try:
            return self._request("GET", "/system_stats").status_code == 200
        except ComfyUnavailable:
            return False

    def wait_until_ready(self, timeout_s: float, interval_s: float = 0.5) -> bool:
        """Wait for ComfyUI to answer, at most timeout_s; True if it did."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.is_ready():
                return True
            if time.monotonic() + interval_s > deadline:
                return False
            time.sleep(interval_s)

    def object_info(self) -> dict[str, Any]:
        """Every node definition the server knows."""
        info = self._json("GET", "/object_info")
        return info if isinstance(info, dict) else {}

    def upload_image(self, data: bytes, filename: str) -> str:
        """Upload into ComfyUI's input folder; returns the name LoadImage must use."""
        files = {"image": (filename, data, "application/octet-stream")}
        form = {"type": "input", "overwrite": "true"}
        response = self._request("POST", "/upload/image", files=files, data=form)
        if response.status_code != 200:
            raise ComfyRejected(f"ComfyUI refused the image upload (HTTP {response.status_code})")
        return _field(_body(response), "name", "/upload/image")

    def queue_prompt(self, graph: Mapping[str, Any], client_id: str) -> str:
        """Queue a graph for our websocket client; returns the prompt id."""
        response = self._request("POST", "/prompt", json={"prompt": graph, "client_id": client_id})
        if response.status_code == 400:
            raise ComfyRejected(f"Processing failed: {describe_rejection(_body(response))}")
        if response.status_code != 200:
            raise ComfyUnavailable(f"ComfyUI answered HTTP {response.status_code} on /prompt")
        return _field(_body(response), "prompt_id", "/prompt")

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The prompt's history entry, or None while ComfyUI has none."""
        body = self._json("GET", f"/history/{prompt_id}")
        entry = body.get(prompt_id) if isinstance(body, dict) else None
        return entry if isinstance(entry, dict) else None

    def view(self, image: Mapping[str, Any], deadline: float | None = None) -> bytes:
        """The bytes of a saved image record (`filename`, `subfolder`, `type`): at most
        VIEW_MAX_BYTES, all of them by `deadline` (the monotonic clock) when one is given."""
        params = {key: str(image.get(key, "")) for key in ("filename", "subfolder", "type")}
        name = params["filename"]
        with self._request("GET", "/view", params=params, stream=True) as response:
            if response.status_code != 200:
                status = response.status_code
                raise ComfyRejected(f"ComfyUI could not return {name} (HTTP {status})")
            chunks: list[bytes] = []
            size = 0
            try:
                # read1: what has come, so the deadline is looked at between the socket's reads
                # (iter_content waits for whole chunks, which a trickle never completes).
                while chunk := response.raw.read1(VIEW_CHUNK_BYTES, decode_content=True):
                    size += len(chunk)
                    if size > VIEW_MAX_BYTES:
                        raise ComfyRejected(
                            f"ComfyUI's output {name} is over {VIEW_MAX_BYTES // 2**20} MiB, "
                            "more than RunPod can return"
                        )
                    if deadline is not None and time.monotonic() > deadline:
                        raise ComfyUnavailable(f"ComfyUI sent {name} too slowly for the deadline")
                    chunks.append(chunk)
            except urllib3.exceptions.HTTPError as exc:  # read1 raises urllib3's own
                raise ComfyUnavailable(unreachable(self.base_url)) from exc
        return b"".join(chunks)

    def interrupt(self, prompt_id: str) -> None:
        """Stop the prompt if it runs and drop it if it still waits; best effort."""
        for path, body in (
            ("/interrupt", {"prompt_id": prompt_id}),
            ("/queue", {"delete": [prompt_id]}),
        ):
            try:
                self._request("POST", path, json=body)
            except ComfyUnavailable:
                log.warning("could not reach ComfyUI to interrupt %s", prompt_id)
                return

    def open_socket(self, client_id: str, timeout_s: float) -> websocket.WebSocket:
        """A websocket subscribed to this client's messages (open it before queueing)."""
        try:
            # Text frames are JSON that json.loads decodes strictly; websocket-client's own UTF-8
            # check is pure Python, byte by byte, and cost more than the rest of the job's reads.
            return websocket.create_connection(
                f"{_ws_url(self.base_url)}/ws?clientId={client_id}",
                timeout=timeout_s,
                skip_utf8_validation=True,
            )
        except (OSError, websocket.WebSocketException) as exc:
            raise ComfyUnavailable(unreachable(self.base_url)) from exc


def unreachable(base_url: str) -> str:
    """The sentence for a ComfyUI that does not answer, with how to point at one."""
    return (
        f"ComfyUI is not reachable at {shown_url(base_url)}; start ComfyUI there "
        "or set COMFY_API_URL to a running ComfyUI"
    )


def shown_url(url: str) -> str:
    """COMFY_API_URL as a job's error or a log line may show it: without a user or password
    (a proxy's credentials in it reached every caller of a failed job)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def _ws_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _field(body: object, name: str, path: str) -> str:
    """A string field of ComfyUI's JSON answer; a ComfyUI that answers otherwise is not one this
    worker can use (the job fails saying so, and RunPod is asked for a fresh worker)."""
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise ComfyUnavailable(f"ComfyUI sent an answer without its {name} on {path}")
    return value


def _body(response: requests.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None
