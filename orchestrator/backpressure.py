"""How hard to call a rate-limited service: no ceiling of ours by default, and after a 429 a
pause until the service's reset time, then half as many calls at once, growing back by one with
each success (additive increase, multiplicative decrease)."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiolimiter import AsyncLimiter


class Backpressure:
    """Calls in flight up to `max_concurrency` (and `per_minute` when set), slowed by 429s."""

    def __init__(
        self,
        max_concurrency: int,
        per_minute: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.limit = max_concurrency
        self.in_flight = 0
        self.resume_at = 0.0
        self._clock = clock
        self._rate = AsyncLimiter(per_minute, 60) if per_minute > 0 else None
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for the pause to end and for room, then hold one call's place."""
        await self._wait_for_room()
        if self._rate is not None:
            await self._rate.acquire()
        try:
            yield
        finally:
            async with self._changed:
                self.in_flight -= 1
                self._changed.notify_all()

    async def _wait_for_room(self) -> None:
        async with self._changed:
            while True:
                pause_s = self.resume_at - self._clock()
                if pause_s <= 0 and self.in_flight < self.limit:
                    self.in_flight += 1
                    return
                timeout = pause_s if pause_s > 0 else None
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout)
                except TimeoutError:
                    continue

    def rate_limited(self, retry_after_s: float | None, default_pause_s: float = 1.0) -> None:
        """A 429: pause everyone until the reset, and halve the calls allowed at once."""
        pause_s = retry_after_s if retry_after_s is not None else default_pause_s
        self.resume_at = max(self.resume_at, self._clock() + max(0.0, pause_s))
        self.limit = max(1, self.limit // 2)

    def succeeded(self) -> None:
        """A call went through: allow one more at once, up to the maximum."""
        self.limit = min(self.max_concurrency, self.limit + 1)
