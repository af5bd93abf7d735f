"""Backpressure's arithmetic, and the reset time read from OpenRouter's 429 headers."""

import asyncio

import pytest

from orchestrator.backpressure import Backpressure
from orchestrator.openrouter import MAX_PAUSE_S, reset_in_s

NOW = 1_790_000_000  # a Unix time in seconds


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_429_halves_the_calls_at_once_and_successes_win_them_back_one_by_one():
    clock = Clock()
    limits = Backpressure(64, clock=clock)
    limits.rate_limited(retry_after_s=2.0)
    assert (limits.limit, limits.resume_at) == (32, 1002.0)
    limits.rate_limited(retry_after_s=None)  # no header: a short default pause
    assert (limits.limit, limits.resume_at) == (16, 1002.0)  # the later reset still holds
    for _ in range(100):
        limits.succeeded()
    assert limits.limit == 64  # never above the maximum


def test_the_limit_never_falls_below_one():
    limits = Backpressure(2)
    for _ in range(5):
        limits.rate_limited(retry_after_s=0)
    assert limits.limit == 1


def test_calls_wait_out_the_pause_and_the_halved_limit():
    async def scenario():
        limits = Backpressure(4)
        limits.rate_limited(retry_after_s=0.3)  # limit 2, paused 0.3 s
        entered: list[float] = []
        release = asyncio.Event()
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def call():
            async with limits.slot():
                entered.append(loop.time() - start)
                await release.wait()

        tasks = [asyncio.create_task(call()) for _ in range(4)]
        await asyncio.sleep(0.5)
        in_flight_while_held = limits.in_flight
        release.set()
        await asyncio.gather(*tasks)
        return entered, in_flight_while_held

    entered, in_flight_while_held = asyncio.run(scenario())
    assert in_flight_while_held == 2
    assert len(entered) == 4
    assert min(entered) >= 0.29  # nobody went before the reset


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"x-ratelimit-reset": str((NOW + 5) * 1000)}, 5.0),  # Unix milliseconds
        ({"x-ratelimit-reset": str(NOW + 7)}, 7.0),  # Unix seconds
        ({"x-ratelimit-reset": str((NOW + 3600) * 1000)}, MAX_PAUSE_S),
        ({"x-ratelimit-reset": str(NOW - 1)}, 0.0),  # already past
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_reset_in_s(headers, expected):
    assert reset_in_s(headers, now_s=NOW) == expected
