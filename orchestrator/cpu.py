"""A lane for the CPU-bound work of every job (decoding outputs, parsing large RunPod answers).

Work in a thread still needs the GIL for its Python parts, so every busy thread slows the event
loop's own thread. Measured with 16 jobs finishing at once (2 MP outputs, `bench/loop_lag.py`):
the event loop's worst stall was ~220 ms with the decoding on the loop, ~120 ms with asyncio's
default pool of threads, ~31 ms with one lane for the decoding and the large JSON answers.
"""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class CpuLane:
    """`threads` threads (CPU_THREADS, default 1) that run CPU-bound calls off the event loop."""

    def __init__(self, threads: int = 1) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="klein-cpu")

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`function(*args, **kwargs)` in the lane, awaited."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: function(*args, **kwargs))

    def close(self) -> None:
        """Let queued calls finish in the background; take no more."""
        self._executor.shutdown(wait=False)
