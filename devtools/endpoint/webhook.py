"""RunPod's completion webhook: POST the /status body, retried a few times, never raising."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

log = logging.getLogger(__name__)


async def deliver_webhook(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], attempts: int, retry_delay_s: float
) -> bool:
    """POST `body` to `url` until a 2xx answer or `attempts` tries; True if it was delivered."""
    for attempt in range(1, attempts + 1):
        try:
            response = await client.post(url, json=body)
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if response.is_success:
                return True
            problem = f"HTTP {response.status_code}"
        log.warning(
            "webhook for job %s, try %d of %d: %s", body.get("id"), attempt, attempts, problem
        )
        if attempt < attempts:
            await asyncio.sleep(retry_delay_s)
    # The URL's path may hold a per-job token: name only the host.
    log.error("webhook for job %s not delivered to %s", body.get("id"), httpx.URL(url).host)
    return False
