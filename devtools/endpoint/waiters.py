"""Long polls: a request waits, bounded, until something arrives for it."""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import suppress


class Waiters:
    """Futures that a long poll awaits; `wake_one` / `wake_all` end the wait early."""

    def __init__(self) -> None:
        self._futures: deque[asyncio.Future[None]] = deque()

    async def wait(self, timeout_s: float | None) -> None:
        """Return when woken or after `timeout_s` (None: only when woken)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures.append(future)
        try:
            await asyncio.wait({future}, timeout=timeout_s)
        finally:
            with suppress(ValueError):
                self._futures.remove(future)

    def wake_one(self) -> None:
        """Wake the longest waiting poll, if any."""
        while self._futures:
            future = self._futures.popleft()
            if not future.done():
                future.set_result(None)
                return

    def wake_all(self) -> None:
        """Wake every waiting poll."""
        while self._futures:
            future = self._futures.popleft()
            if not future.done():
                future.set_result(None)
