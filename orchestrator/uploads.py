"""How many megabytes of output images upload at once (MAX_UPLOADING_MB).

A finished job's answer is held in one of OUTPUT_SLOTS (outputs.py) only until it is unpacked
into its PNG. The upload that follows takes as long as Storage does, and a slot held through it
capped the whole pipeline at OUTPUT_SLOTS / upload time: 4 slots and a 0.4 s upload, 8.7 jobs/s
on a machine a quarter busy (`bench/full_path.py --storage-s 0.4`). An upload holds its PNG and
nothing else, so it is bounded here by bytes instead: a finished output waits for room in its
output slot, and memory stays flat however slow Storage is.
"""

import asyncio
from collections import deque
from types import TracebackType

MiB = 1024 * 1024


class UploadBudget:
    """`max_bytes` of images uploading at once, granted in arrival order (a large image is not
    passed over by smaller ones); an image larger than the whole budget takes all of it."""

    def __init__(self, max_bytes: int = 64 * MiB) -> None:
        self.max_bytes = max_bytes
        self.free = max_bytes
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def reserve(self, size: int) -> "Reservation":
        """Room for an image of `size` bytes, waited for while the budget is spent; give it
        back by leaving the returned reservation's `with` block."""
        size = min(size, self.max_bytes)
        if not self._waiting and size <= self.free:
            self.free -= size
            return Reservation(self, size)
        entry = (size, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry in self._waiting:
                self._waiting.remove(entry)
                self._grant()  # those behind it may fit now
            elif not entry[1].cancelled():
                self._give_back(size)  # granted as it was cancelled: pass the room on
            raise
        return Reservation(self, size)

    def _give_back(self, size: int) -> None:
        self.free += size
        self._grant()

    def _grant(self) -> None:
        """Grant the waiters at the head of the line that now fit, in order."""
        while self._waiting and self._waiting[0][0] <= self.free:
            size, granted = self._waiting.popleft()
            if not granted.done():  # a cancelled waiter takes nothing
                self.free -= size
                granted.set_result(None)


class Reservation:
    """Room granted for one upload, given back once (when its `with` block ends)."""

    def __init__(self, budget: UploadBudget, size: int) -> None:
        self._budget = budget
        self.size = size

    def __enter__(self) -> "Reservation":
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        """Give the room back (at most once)."""
        size, self.size = self.size, 0
        if size:
            self._budget._give_back(size)
