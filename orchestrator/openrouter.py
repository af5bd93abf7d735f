"""OpenRouter through the openai SDK: translating prompts and titling images."""

import openai
from aiolimiter import AsyncLimiter
from openai.types.chat import ChatCompletionMessageParam

from orchestrator.errors import NeedsOperator, Permanent, Transient
from orchestrator.metrics import Metrics

TRANSLATE_SYSTEM_PROMPT = (
    "You translate Korean user prompts to English for image generation. "
    "Output only the translated prompt, nothing else."
)
TITLE_SYSTEM_PROMPT = "이미지를 보고 한국어로 짧은 제목을 생성해주세요. 10자 이내로 작성하세요."


class OpenRouterClient:
    """Chat completions for translation (text) and titles (vision), rate-limited."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        translate_model: str,
        title_model: str,
        requests_per_minute: int = 90,
        metrics: Metrics | None = None,
    ) -> None:
        self._client = client
        self._translate_model = translate_model
        self._title_model = title_model
        self._limit = AsyncLimiter(requests_per_minute, 60)
        self._metrics = metrics

    async def translate(self, text: str) -> str:
        """English for a Korean prompt."""
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": TRANSLATE_SYSTEM_PROMPT},
            {"role": "user", "content": text},
        ]
        answer = await self._complete(self._translate_model, messages, max_tokens=600)
        if not answer.strip():
            raise Transient("OpenRouter returned an empty translation")
        return answer.strip()

    async def title(self, image_url: str) -> str:
        """The model's raw answer to the title prompt for an image (cleaned by the caller)."""
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": TITLE_SYSTEM_PROMPT},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}}]},
        ]
        return await self._complete(self._title_model, messages, max_tokens=40)

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.calls.labels("openrouter", outcome).inc()

    async def _complete(
        self, model: str, messages: list[ChatCompletionMessageParam], max_tokens: int
    ) -> str:
        async with self._limit:
            try:
                completion = await self._client.chat.completions.create(
                    model=model,
                    messages=messages,
                    max_tokens=max_tokens,
                    temperature=0.2,
                )
            except openai.APIStatusError as exc:
                self._count(str(exc.status_code))
                raise translate_status_error(exc) from exc
            except (openai.APIConnectionError, openai.APITimeoutError) as exc:
                self._count(type(exc).__name__)
                raise Transient(f"OpenRouter unreachable: {type(exc).__name__}") from exc
        self._count("200")
        if not completion.choices:
            raise Transient("OpenRouter returned no choices")
        return completion.choices[0].message.content or ""


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
        retry_after = exc.response.headers.get("retry-after") if exc.response else None
        return Transient(f"OpenRouter answered {code}", retry_after_s=_seconds(retry_after))
    return Permanent(f"OpenRouter refused the request ({code})")


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
