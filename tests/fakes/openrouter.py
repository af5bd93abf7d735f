"""An OpenRouter chat-completions server for tests (OpenAI-compatible, OpenRouter's error shape).

`POST {base_path}/chat/completions` answers a `chat.completion` whose content comes from
`server.reply(request_body)`; `fail_next` and `stall_next` script failures and slow answers.
Point the `openai` SDK at it with `AsyncOpenAI(base_url=server.base_url, api_key=server.api_key)`.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from devtools.background_server import BackgroundServer, Scripted, encode_body

DEFAULT_API_KEY = "sk-or-v1-test-key"
DEFAULT_BASE_PATH = "/api/v1"
IMAGE_TITLE = "해변의 노을 풍경"
TRANSLATION_PREFIX = "EN: "
DEFAULT_RETRY_AFTER = "1"
PROVIDER = "FakeProvider"

# OpenRouter's messages for its documented error codes (https://openrouter.ai/docs/api/errors).
ERROR_MESSAGES = {
    400: "Bad Request",
    401: "User not found.",
    402: "Insufficient credits",
    403: "Your chosen model requires moderation and your input was flagged",
    408: "Request timed out",
    429: "Rate limit exceeded: too many requests",
    500: "Internal Server Error",
    502: "Provider returned error",
    503: "No available model provider that meets your routing requirements",
}

Reply = Callable[[dict[str, Any]], str]


# --------------------------------------------------------------------------- pure helpers


def last_user_message(body: dict[str, Any]) -> dict[str, Any] | None:
    """The request's last message with role `user`, or None."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users else None


def _parts(message: dict[str, Any] | None) -> list[dict[str, Any]]:
    content = (message or {}).get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [p for p in content if isinstance(p, dict)]
    return []


def is_image_request(body: dict[str, Any]) -> bool:
    """True when the last user message carries an `image_url` part (a vision request)."""
    return any(p.get("type") == "image_url" for p in _parts(last_user_message(body)))


def user_text(body: dict[str, Any]) -> str:
    """The text of the last user message (its text parts joined by newlines)."""
    parts = _parts(last_user_message(body))
    return "\n".join(str(p.get("text", "")) for p in parts if p.get("type") == "text")


def default_reply(body: dict[str, Any]) -> str:
    """A title for an image request, `EN: <user text>` for a text request."""
    return IMAGE_TITLE if is_image_request(body) else TRANSLATION_PREFIX + user_text(body)


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """OpenRouter's error shape: `{"error": {"code": status, "message": ...}}`."""
    text = message or ERROR_MESSAGES.get(status, "Error")
    return {"error": {"code": status, "message": text}}


def request_problem(body: object) -> str | None:
    """Why OpenRouter would refuse this body with a 400, or None when it is acceptable."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model is required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty array"
    if body.get("stream"):
        return "stream is not supported by this test server"
    return None


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def completion(body: dict[str, Any], content: str, *, completion_id: str) -> dict[str, Any]:
    """A non-streaming `chat.completion` object as OpenRouter returns it."""
    prompt_tokens = sum(_tokens(json.dumps(m, ensure_ascii=False)) for m in body["messages"])
    finish_reason = "stop"
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and 0 < max_tokens < _tokens(content):
        content, finish_reason = content[: max_tokens * 4], "length"  # cut off, as models are
    completion_tokens = _tokens(content)
    return {
        "id": completion_id,
        "provider": PROVIDER,
        "model": body["model"],
        "object": "chat.completion",
        "created": int(time.time()),
        "choices": [
            {
                "index": 0,
                "logprobs": None,
                "finish_reason": finish_reason,
                "native_finish_reason": finish_reason,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": None,
                    "reasoning": None,
                },
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _json(
    status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(payload, status=status, headers=headers, dumps=_dumps)


def _dumps(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False)


# --------------------------------------------------------------------------- the server


class OpenRouterServer(BackgroundServer):
    """OpenRouter's `/chat/completions` on 127.0.0.1, run on its own loop in a thread."""

    thread_name = "openrouter-test-server"

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        base_path: str = DEFAULT_BASE_PATH,
        reply: Reply = default_reply,
        port: int = 0,
    ) -> None:
        super().__init__(port=port)
        self.api_key = api_key
        self.base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""
        self.reply: Reply = reply
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        """What to give the SDK as `base_url` (`{url}/api/v1` by default)."""
        return self.url + self.base_path

    def fail_next(
        self,
        status: int,
        times: int = 1,
        body: dict[str, Any] | str | bytes | None = None,
        *,
        retry_after: str | None = None,
    ) -> None:
        """Answer the next `times` requests with `status` and OpenRouter's error body.

        A 429 carries `Retry-After` (`retry_after`, "1" by default); other statuses carry it only
        when `retry_after` is given. A dict body is sent as JSON, str/bytes as they are. Status
        200 with a body scripts OpenRouter's in-band errors (HTTP 200, `{"error": ...}`).
        """
        raw, content_type = encode_body(error_body(status) if body is None else body)
        if retry_after is None and status == 429:
            retry_after = DEFAULT_RETRY_AFTER
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.script.push(Scripted(status, raw, content_type, headers), times)

    def reset(self) -> None:
        """Forget recorded requests and queued answers; restore the default reply."""
        self.requests.clear()
        self.request_headers.clear()
        self.script.clear()
        self.reply = default_reply

    def _routes(self) -> list[web.RouteDef]:
        return [web.post(f"{self.base_path}/chat/completions", self._chat_completions)]

    async def _chat_completions(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _json(400, error_body(400, "Invalid JSON body"))
        if isinstance(body, dict):
            self.requests.append(body)
            self.request_headers.append(dict(request.headers))
        if (denied := self._auth_problem(request)) is not None:
            return _json(401, error_body(401, denied))
        if (scripted := await self._scripted_answer()) is not None:
            return scripted
        if (problem := request_problem(body)) is not None:
            return _json(400, error_body(400, problem))
        content = self.reply(body)
        completion_id = f"gen-{int(time.time())}-{next(self._ids):06d}"
        return _json(200, completion(body, content, completion_id=completion_id))

    def _auth_problem(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "No auth credentials found"
        if token.strip() != self.api_key:
            return "User not found."
        return None
