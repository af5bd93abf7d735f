"""OpenRouter through the openai SDK: translating prompts and titling images."""

import time
from collections.abc import Mapping
from typing import Any, cast

import httpx
import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from openai.types.chat.chat_completion import Choice

from handler.contract import PROMPT_MAX_CHARS
from orchestrator.backpressure import Backpressure
from orchestrator.errors import NeedsOperator, Permanent, Transient
from orchestrator.http_clients import AnswerOverCap, http_client, over_cap
from orchestrator.metrics import Metrics

TRANSLATE_SYSTEM_PROMPT = (
    "You translate Korean user prompts to English for image generation. "
    "Output only the translated prompt, nothing else."
)
MAX_PAUSE_S = 60.0  # a reset further away than this is not waited for in one go
MAX_CHAIN = 16  # exceptions followed back to the first failure (a chain cannot loop past this)
# A chat completion's answer is a few kilobytes; a broken or hostile one is not read past this.
ANSWER_MAX_BYTES = 1024 * 1024
TITLE_SYSTEM_PROMPT = "이미지를 보고 한국어로 짧은 제목을 생성해주세요. 10자 이내로 작성하세요."


def openrouter_sdk(
    base_url: str, api_key: str, *, timeout_s: float = 60, connections: int = 256
) -> openai.AsyncOpenAI:
    """The openai SDK on our HTTP client (aiohttp's transport, as the SDK's own `aiohttp`
    extra, 40% less CPU per call than httpx's: bench/http_transport.py), so that an answer
    is cut off at ANSWER_MAX_BYTES and a failure is named by what happened on the socket."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return openai.AsyncOpenAI(
        base_url=base_url,
        api_key=api_key,
        max_retries=0,
        timeout=timeout_s,
        # The SDK (3.x) runs on httpx2, a fork of httpx, and takes httpx's own clients too
        # (openai/_httpx2.py: its errors and timeouts are mapped alike); only its annotation
        # names httpx2's alone.
        http_client=cast(Any, http_client(timeout_s, limits, max_answer_bytes=ANSWER_MAX_BYTES)),
    )


class OpenRouterClient:
    """Chat completions for translation (text) and titles (vision). No ceiling of its own by
    default (OPENROUTER_MAX_CONCURRENCY, OPENROUTER_RPM); a 429 slows it down until it recovers."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        translate_model: str,
        title_model: str,
        max_concurrency: int = 256,
        requests_per_minute: int = 0,
        metrics: Metrics | None = None,
    ) -> None:
        self._client = client
        self._translate_model = translate_model
        self._title_model = title_model
        self.backpressure = Backpressure(max_concurrency, requests_per_minute)
        self._metrics = metrics

    async def translate(self, text: str) -> str:
        """English for a Korean prompt."""
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": TRANSLATE_SYSTEM_PROMPT},
            {"role": "user", "content": text},
        ]
        choice = await self._complete(self._translate_model, messages, max_tokens=600)
        answer = (choice.message.content or "").strip()
        if not answer:
            raise Transient("OpenRouter returned an empty translation")
        # What the worker would refuse, or half an instruction: not worth asking again.
        if choice.finish_reason == "length":
            raise Permanent("OpenRouter's translation was cut off at its max_tokens")
        if len(answer) > PROMPT_MAX_CHARS:
            raise Permanent(
                f"OpenRouter's translation is over the worker's {PROMPT_MAX_CHARS} characters"
            )
        return answer

    async def title(self, image_url: str) -> str:
        """The model's raw answer to the title prompt for an image (cleaned by the caller)."""
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": TITLE_SYSTEM_PROMPT},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}}]},
        ]
        choice = await self._complete(self._title_model, messages, max_tokens=40)
        return choice.message.content or ""

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.calls.labels("openrouter", outcome).inc()

    async def _complete(
        self, model: str, messages: list[ChatCompletionMessageParam], max_tokens: int
    ) -> Choice:
        async with self.backpressure.slot():
            try:
                # The SDK's way to send a body as it is (`post`, "undocumented endpoints" in
                # its README): `chat.completions.create` first walks its typed parameters for
                # transforms these plain messages never need, 5% of klein serve's CPU at 10
                # jobs/s (py-spy, bench/full_path.py). Errors, retries, timeouts: the same path.
                completion = await self._client.post(
                    "/chat/completions",
                    cast_to=ChatCompletion,
                    body={
                        "model": model,
                        "messages": messages,
                        "max_tokens": max_tokens,
                        "temperature": 0.2,
                    },
                )
            except openai.APIStatusError as exc:
                self._count(str(exc.status_code))
                error = translate_status_error(exc)
                if exc.status_code == 429 and isinstance(error, Transient):
                    self.backpressure.rate_limited(error.retry_after_s)
                raise error from exc
            except (openai.APIConnectionError, openai.APITimeoutError) as exc:
                self._count(type(exc).__name__)
                raise Transient(unanswered(exc)) from exc
            # Not JSON, absurdly nested (RecursionError), or not what the SDK can build.
            except (ValueError, RecursionError, openai.APIResponseValidationError) as exc:
                self._count("malformed")
                raise Transient("OpenRouter sent a malformed answer") from exc
        self.backpressure.succeeded()
        self._count("200")
        return first_choice(completion)


def first_choice(completion: ChatCompletion) -> Choice:
    """The answer's first choice, when it has the shape of one (the SDK builds its models
    without validating them: a string where the choices belong stays a string)."""
    choices: object = completion.choices
    if not isinstance(choices, list) or not choices:
        raise Transient("OpenRouter returned no choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    if not isinstance(choice, Choice) or not isinstance(content, str | None):
        raise Transient("OpenRouter sent a malformed answer")
    return choice


def translate_status_error(exc: openai.APIStatusError) -> Exception:
    """What an OpenRouter HTTP error means for the job."""
    code = exc.status_code
    if code == 401:
        return NeedsOperator(
            "OpenRouter refused the API key (401); check OPENROUTER_API_KEY", "openrouter"
        )
    if code == 402:
        return NeedsOperator("OpenRouter is out of credits (402)", "openrouter")
    if code == 429 or code >= 500 or code in (408, 502, 503):
        headers = exc.response.headers if exc.response is not None else {}
        return Transient(f"OpenRouter answered {code}", retry_after_s=reset_in_s(headers))
    return Permanent(f"OpenRouter refused the request ({code})")


def unanswered(exc: openai.APIError) -> str:
    """What became of a call that got no answer: the SDK's error and, when it differs, the
    first failure in its chain (the SDK's own aiohttp client called a refused connection an
    APITimeoutError, which alone would mislead), or that the answer was over its cap."""
    first: BaseException = exc
    for _ in range(MAX_CHAIN):
        cause = first.__cause__ or first.__context__
        if cause is None:
            break
        first = cause
    if isinstance(first, AnswerOverCap):
        return over_cap("OpenRouter", ANSWER_MAX_BYTES)
    name, why = type(exc).__name__, type(first).__name__
    return f"OpenRouter unreachable: {name if why == name else f'{name} ({why})'}"


def reset_in_s(headers: Mapping[str, str], now_s: float | None = None) -> float | None:
    """Seconds until the limit resets: `Retry-After` (seconds), else OpenRouter's
    `X-RateLimit-Reset` (a Unix time in milliseconds), capped at MAX_PAUSE_S."""
    now_s = time.time() if now_s is None else now_s
    retry_after = _number(headers.get("retry-after"))
    if retry_after is not None:
        return min(MAX_PAUSE_S, max(0.0, retry_after))
    reset = _number(headers.get("x-ratelimit-reset"))
    if reset is None:
        return None
    reset_s = reset / 1000 if reset > 1e11 else reset  # milliseconds, or seconds
    return min(MAX_PAUSE_S, max(0.0, reset_s - now_s))


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
