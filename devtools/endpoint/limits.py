"""Request gates that need no job: RunPod-style rate limits, and scripted failures on demand."""

from __future__ import annotations

import threading
from collections.abc import Callable

ROUTES = frozenset({"run", "runsync", "status", "stream", "cancel", "health", "purge-queue"})


class TokenBucket:
    """`limit` requests per `window_s`, refilled continuously (bursts up to `limit`)."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float]) -> None:
        self._capacity = float(limit)
        self._rate_per_s = limit / window_s
        self._clock = clock
        self._tokens = float(limit)
        self._at = clock()

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate_per_s)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class Injections:
    """A development hook: the next N requests to a route answer a given status code instead."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # scripted from the caller's own thread
        self._pending: dict[str, list[int]] = {}

    def add(self, status_code: int, times: int, route: str) -> None:
        """Queue `times` answers of `status_code` for `route` (one of ROUTES)."""
        if route not in ROUTES:
            raise ValueError(f"route must be one of {sorted(ROUTES)}")
        if not 400 <= status_code <= 599 or times < 1:
            raise ValueError("status_code must be 4xx/5xx and times at least 1")
        with self._lock:
            self._pending.setdefault(route, []).extend([status_code] * times)

    def take(self, route: str) -> int | None:
        """The status code this request to `route` must answer, if one is scripted."""
        with self._lock:
            codes = self._pending.get(route)
            return codes.pop(0) if codes else None
