"""The RunPod id in a completion webhook's body, found without keeping or parsing the body.

The body is the job's status object with the whole output (megabytes of base64). Measured with
200 jobs finishing together and 1 MP outputs (`bench/full_path.py`): each body held whole and
parsed on the event loop (~6 ms each) cost hundreds of MB and stalled every job for a second.
"""

import json
import re
from collections import deque

ID_KEY = b'"id"'
ID_VALUE = re.compile(rb'"id"\s*:\s*"([^"\\]{1,200})"')
KEPT_BYTES = 64 * 1024


class IdScan:
    """A completion webhook's body, read chunk by chunk without keeping it. Kept: its first and
    last KEPT_BYTES, and how often the key `"id"` occurs in it."""

    def __init__(self) -> None:
        self.head = b""
        self._tail: deque[bytes] = deque()  # the last chunks, at least KEPT_BYTES of them
        self._tail_size = 0
        self._seam = b""  # the body's last 3 bytes: a key may straddle chunks
        self.size = 0
        self.keys = 0

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the body (chunks are small: copying the kept tail on each
        one cost ~4% of klein serve's CPU under load)."""
        self.keys += (self._seam + chunk).count(ID_KEY) if self._seam else chunk.count(ID_KEY)
        self._seam = (self._seam + chunk)[-(len(ID_KEY) - 1) :]
        self.size += len(chunk)
        if len(self.head) < KEPT_BYTES:
            self.head += chunk[: KEPT_BYTES - len(self.head)]
        self._tail.append(chunk)
        self._tail_size += len(chunk)
        while self._tail_size - len(self._tail[0]) >= KEPT_BYTES:
            self._tail_size -= len(self._tail.popleft())

    @property
    def tail(self) -> bytes:
        """The body's last KEPT_BYTES (all of it when shorter)."""
        return b"".join(self._tail)[-KEPT_BYTES:]

    def runpod_id(self) -> str | None:
        """The RunPod job id: from the whole body when it was small enough to keep, else from
        the one `"id"` key (in the kept head or tail); None when it cannot be told."""
        if self.size <= KEPT_BYTES:
            return runpod_id_from_body(self.head)
        if self.keys != 1:
            return None
        found = ID_VALUE.search(self.head) or ID_VALUE.search(self.tail)
        return found.group(1).decode("utf-8", "replace") if found else None


def runpod_id_from_body(body: bytes) -> str | None:
    """The RunPod job id in a whole (small) webhook body, if it has one."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None  # the webhook still wakes the job: its poll reads the status itself
    return runpod_id_of(parsed)


def runpod_id_of(status: object) -> str | None:
    """The RunPod job id of a parsed status object, if it has a usable one."""
    job_id = status.get("id") if isinstance(status, dict) else None
    return job_id if isinstance(job_id, str) and 0 < len(job_id) <= 200 else None
