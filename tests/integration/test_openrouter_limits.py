"""OpenRouter's client against the protocol fake: no ceiling of its own (120 calls at once go
through), and a 429 pauses it until the reset, then it recovers; translation and titles keep
their fallbacks when the limit persists."""

import asyncio

import openai

from orchestrator.openrouter import OpenRouterClient, openrouter_sdk
from tests.fakes.openrouter import IMAGE_TITLE


def client_for(server, **options) -> tuple[openai.AsyncOpenAI, OpenRouterClient]:
    connections = options.get("max_concurrency", 64)
    llm = openrouter_sdk(server.base_url, server.api_key, connections=connections)
    return llm, OpenRouterClient(llm, translate_model="t", title_model="v", **options)


def test_many_calls_at_once_are_not_held_back_by_a_limit_of_ours(openrouter_server):
    """The old fixed limiter let 90 calls a minute through; a paid key allows far more."""

    async def scenario():
        llm, client = client_for(openrouter_server, max_concurrency=200)
        async with llm:
            return await asyncio.wait_for(
                asyncio.gather(*(client.translate(f"프롬프트 {i}") for i in range(120))), 30
            )

    answers = asyncio.run(scenario())
    assert len(answers) == 120
    assert len(openrouter_server.requests) == 120


def test_a_429_pauses_the_client_until_the_reset_then_it_recovers(openrouter_server):
    openrouter_server.fail_next(429, retry_after="1")

    async def scenario():
        llm, client = client_for(openrouter_server, max_concurrency=8)
        loop = asyncio.get_running_loop()
        async with llm:
            try:
                await client.translate("첫 번째")
            except Exception as exc:  # the 429, as the flow sees it
                first = type(exc).__name__
            halved = client.backpressure.limit
            start = loop.time()
            answer = await client.translate("두 번째")
            waited = loop.time() - start
            return first, halved, waited, answer, client.backpressure.limit

    first, halved, waited, answer, recovered = asyncio.run(scenario())
    assert first == "Transient"
    assert halved == 4
    assert waited >= 0.9  # the second call waited for the reset the 429 named
    assert answer.startswith("EN: ")
    assert recovered == 5


def test_translation_and_title_send_openrouter_the_chat_completion_they_mean(openrouter_server):
    """The body goes out as the client builds it (`client.post`, not the typed `create`): the
    model, the messages, the limits and the headers OpenRouter reads, with nothing dropped."""

    async def scenario():
        llm, client = client_for(openrouter_server)
        async with llm:
            return await client.translate("바다"), await client.title("https://x.test/a.png")

    translated, titled = asyncio.run(scenario())
    assert (translated, titled) == ("EN: 바다", IMAGE_TITLE)
    translation, title = openrouter_server.requests
    assert (translation["model"], translation["max_tokens"], translation["temperature"]) == (
        "t",
        600,
        0.2,
    )
    assert [m["role"] for m in translation["messages"]] == ["system", "user"]
    assert translation["messages"][1]["content"] == "바다"
    assert (title["model"], title["max_tokens"]) == ("v", 40)
    assert title["messages"][1]["content"] == [
        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}
    ]
    headers = openrouter_server.request_headers[0]
    assert headers["Authorization"] == f"Bearer {openrouter_server.api_key}"
    assert headers["Content-Type"] == "application/json"
