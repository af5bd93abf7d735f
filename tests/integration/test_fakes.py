"""The OpenRouter and Supabase Storage fakes, driven through the real SDK clients.

These pin that the fakes speak the protocols the orchestrator's adapters will meet: the `openai`
SDK parses the completions and raises its own exceptions for the scripted failures; storage3
uploads, upserts, refuses duplicates and builds public URLs the fake serves.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from storage3 import AsyncStorageClient
from storage3.exceptions import StorageApiError
from supabase import AsyncClientOptions, acreate_client

from tests.fakes.openrouter import IMAGE_TITLE, OpenRouterServer
from tests.fakes.storage import StorageServer

MODEL = "google/gemini-2.5-flash"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
PATH = "9b2f0c1e-0000-4000-8000-000000000001/7d1e2f3a-0000-4000-8000-000000000002/output.png"
PNG_OPTIONS: dict[str, Any] = {"content-type": "image/png", "upsert": "true"}


# --------------------------------------------------------------------------- OpenRouter


def openai_client(server: OpenRouterServer, api_key: str | None = None) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=server.base_url, api_key=api_key or server.api_key, max_retries=0, timeout=5.0
    )


async def chat(client: AsyncOpenAI, content: Any) -> Any:
    async with client:
        return await client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": "Translate Korean to English."},
                {"role": "user", "content": content},
            ],
        )


def test_text_request_gets_a_completion_the_sdk_parses(
    openrouter_server: OpenRouterServer,
) -> None:
    answer = asyncio.run(chat(openai_client(openrouter_server), "바다 위의 고양이"))
    assert answer.choices[0].message.content == "EN: 바다 위의 고양이"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.object == "chat.completion"
    assert answer.model == MODEL
    assert answer.id
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    [body] = openrouter_server.requests
    assert body["model"] == MODEL
    assert body["messages"][1] == {"role": "user", "content": "바다 위의 고양이"}
    assert openrouter_server.request_headers[0]["Authorization"] == "Bearer sk-or-v1-test-key"


def test_vision_request_gets_the_korean_title(openrouter_server: OpenRouterServer) -> None:
    content = [
        {"type": "text", "text": "이 그림의 제목"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    answer = asyncio.run(chat(openai_client(openrouter_server), content))
    assert answer.choices[0].message.content == IMAGE_TITLE
    image_part = openrouter_server.requests[0]["messages"][1]["content"][1]
    assert image_part["image_url"]["url"].startswith("data:image/png;base64,")


def test_reply_callable_scripts_the_content(openrouter_server: OpenRouterServer) -> None:
    openrouter_server.reply = lambda body: f"{body['model']} says hi"
    answer = asyncio.run(chat(openai_client(openrouter_server), "안녕"))
    assert answer.choices[0].message.content == f"{MODEL} says hi"


def test_wrong_key_is_an_authentication_error(openrouter_server: OpenRouterServer) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        asyncio.run(chat(openai_client(openrouter_server, api_key="sk-or-v1-wrong"), "안녕"))
    assert caught.value.status_code == 401
    assert caught.value.body == {"code": 401, "message": "User not found."}


def test_429_is_a_rate_limit_error_with_retry_after(openrouter_server: OpenRouterServer) -> None:
    openrouter_server.fail_next(429)
    openrouter_server.fail_next(429, retry_after="7")
    for expected in ("1", "7"):
        with pytest.raises(openai.RateLimitError) as caught:
            asyncio.run(chat(openai_client(openrouter_server), "안녕"))
        assert caught.value.response.headers["Retry-After"] == expected
        assert caught.value.body["code"] == 429


def test_402_is_a_status_error_for_insufficient_credits(
    openrouter_server: OpenRouterServer,
) -> None:
    openrouter_server.fail_next(402)
    with pytest.raises(openai.APIStatusError) as caught:
        asyncio.run(chat(openai_client(openrouter_server), "안녕"))
    assert type(caught.value) is openai.APIStatusError
    assert caught.value.status_code == 402
    assert caught.value.body == {"code": 402, "message": "Insufficient credits"}
    assert "Retry-After" not in caught.value.response.headers


def test_failures_are_used_up_then_answers_resume(openrouter_server: OpenRouterServer) -> None:
    openrouter_server.fail_next(500, times=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            asyncio.run(chat(openai_client(openrouter_server), "안녕"))
    answer = asyncio.run(chat(openai_client(openrouter_server), "안녕"))
    assert answer.choices[0].message.content == "EN: 안녕"
    assert len(openrouter_server.requests) == 3


def test_stalled_request_times_the_client_out(openrouter_server: OpenRouterServer) -> None:
    openrouter_server.stall_next(30)
    client = AsyncOpenAI(
        base_url=openrouter_server.base_url,
        api_key=openrouter_server.api_key,
        max_retries=0,
        timeout=0.2,
    )
    with pytest.raises(openai.APITimeoutError):
        asyncio.run(chat(client, "안녕"))


def test_request_without_messages_is_a_bad_request(openrouter_server: OpenRouterServer) -> None:
    async def empty() -> Any:
        async with openai_client(openrouter_server) as client:
            return await client.chat.completions.create(model=MODEL, messages=[])

    with pytest.raises(openai.BadRequestError) as caught:
        asyncio.run(empty())
    assert caught.value.body["code"] == 400


# --------------------------------------------------------------------------- Storage


def storage_client(
    server: StorageServer,
    *,
    key: str | None = None,
    apikey: str | None = None,
    timeout_s: float = 5.0,
) -> AsyncStorageClient:
    """storage3's client as the orchestrator would build it, on an injected httpx client."""
    headers = {
        "apikey": apikey or server.service_key,
        "Authorization": f"Bearer {key or server.service_key}",
    }
    return AsyncStorageClient(
        server.storage_url, headers, http_client=httpx.AsyncClient(timeout=timeout_s)
    )


async def upload(
    client: AsyncStorageClient, data: bytes = PNG, options: dict[str, Any] | None = None
) -> Any:
    async with client:
        return await client.from_("works").upload(PATH, data, options or PNG_OPTIONS)


def test_upload_stores_the_object_and_its_public_url_serves_it(
    storage_server: StorageServer,
) -> None:
    async def scenario() -> tuple[Any, str, httpx.Response]:
        async with storage_client(storage_server) as client:
            bucket = client.from_("works")
            result = await bucket.upload(PATH, PNG, PNG_OPTIONS)
            url = await bucket.get_public_url(PATH)
        async with httpx.AsyncClient() as http:
            return result, url, await http.get(url)

    result, url, response = asyncio.run(scenario())
    assert result.path == PATH
    assert result.full_path == f"works/{PATH}"
    assert storage_server.objects[("works", PATH)] == (PNG, "image/png")
    assert url == f"{storage_server.url}/storage/v1/object/public/works/{PATH}"
    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"
    [record] = storage_server.uploads
    assert (record.method, record.upsert, record.cache_control) == ("POST", True, "max-age=3600")


def test_upsert_overwrites_an_existing_object(storage_server: StorageServer) -> None:
    asyncio.run(upload(storage_client(storage_server)))
    asyncio.run(upload(storage_client(storage_server), b"second"))
    assert storage_server.objects[("works", PATH)] == (b"second", "image/png")


def test_upload_without_upsert_refuses_an_existing_object(storage_server: StorageServer) -> None:
    asyncio.run(upload(storage_client(storage_server)))
    with pytest.raises(StorageApiError) as caught:
        asyncio.run(
            upload(storage_client(storage_server), b"second", {"content-type": "image/png"})
        )
    assert caught.value.status == "409"
    assert caught.value.code == "Duplicate"
    assert caught.value.message == "The resource already exists"
    assert storage_server.objects[("works", PATH)].data == PNG


def test_update_replaces_an_existing_object_and_misses_an_absent_one(
    storage_server: StorageServer,
) -> None:
    async def update(data: bytes) -> Any:
        async with storage_client(storage_server) as client:
            return await client.from_("works").update(PATH, data, {"content-type": "image/png"})

    with pytest.raises(StorageApiError) as caught:
        asyncio.run(update(b"nothing yet"))
    assert caught.value.status == "404"
    asyncio.run(upload(storage_client(storage_server)))
    asyncio.run(update(b"replaced"))
    assert storage_server.objects[("works", PATH)].data == b"replaced"


def test_unknown_bucket_is_bucket_not_found(storage_server: StorageServer) -> None:
    async def scenario() -> Any:
        async with storage_client(storage_server) as client:
            return await client.from_("nope").upload(PATH, PNG, PNG_OPTIONS)

    with pytest.raises(StorageApiError) as caught:
        asyncio.run(scenario())
    assert (caught.value.status, caught.value.message) == ("404", "Bucket not found")
    assert storage_server.objects == {}


def test_wrong_service_key_is_refused(storage_server: StorageServer) -> None:
    with pytest.raises(StorageApiError) as caught:
        asyncio.run(upload(storage_client(storage_server, key="not-the-key")))
    assert (caught.value.status, caught.value.code) == ("403", "Unauthorized")
    with pytest.raises(StorageApiError) as caught:
        asyncio.run(upload(storage_client(storage_server, apikey="not-the-key")))
    assert caught.value.status == 401  # the gateway's body is not Storage's: storage3 says so
    assert storage_server.objects == {}


def test_scripted_server_error_then_recovery(storage_server: StorageServer) -> None:
    storage_server.fail_next(500)
    storage_server.fail_next(503, body="<html>503 Service Temporarily Unavailable</html>")
    with pytest.raises(StorageApiError) as caught:
        asyncio.run(upload(storage_client(storage_server)))
    assert caught.value.status == "500"
    with pytest.raises(StorageApiError) as caught:
        asyncio.run(upload(storage_client(storage_server)))
    assert caught.value.status == 503
    asyncio.run(upload(storage_client(storage_server)))
    assert storage_server.objects[("works", PATH)].data == PNG


def test_stalled_upload_times_the_client_out(storage_server: StorageServer) -> None:
    storage_server.stall_next(30)
    with pytest.raises(httpx.TimeoutException):
        asyncio.run(upload(storage_client(storage_server, timeout_s=0.2)))


def test_stopped_server_refuses_connections_and_restarts_on_its_port(
    storage_server: StorageServer,
) -> None:
    url = storage_server.url
    storage_server.stop()
    with pytest.raises(httpx.ConnectError):
        asyncio.run(upload(storage_client(storage_server)))
    storage_server.start()
    assert storage_server.url == url
    asyncio.run(upload(storage_client(storage_server)))
    assert ("works", PATH) in storage_server.objects


def test_supabase_acreate_client_storage_uploads(storage_server: StorageServer) -> None:
    async def scenario() -> str:
        async with httpx.AsyncClient(timeout=5.0) as http:
            options = AsyncClientOptions(httpx_client=http)
            client = await acreate_client(storage_server.url, storage_server.service_key, options)
            bucket = client.storage.from_("works")
            await bucket.upload(PATH, PNG, PNG_OPTIONS)
            url: str = await bucket.get_public_url(PATH)
            return url

    assert asyncio.run(scenario()) == storage_server.public_url("works", PATH)
    assert storage_server.objects[("works", PATH)] == (PNG, "image/png")


def test_raw_body_upload_takes_the_content_type_header(storage_server: StorageServer) -> None:
    headers = {
        "apikey": storage_server.service_key,
        "Authorization": f"Bearer {storage_server.service_key}",
        "Content-Type": "image/png",
        "x-upsert": "true",
    }
    response = httpx.post(
        f"{storage_server.storage_url}object/works/{PATH}", content=PNG, headers=headers
    )
    assert response.status_code == 200
    assert response.json()["Key"] == f"works/{PATH}"
    assert storage_server.objects[("works", PATH)] == (PNG, "image/png")


def test_public_read_of_a_missing_object_is_not_found(storage_server: StorageServer) -> None:
    response = httpx.get(storage_server.public_url("works", PATH))
    assert response.status_code == 400
    assert response.json()["statusCode"] == "404"
