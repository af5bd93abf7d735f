"""The RunPod id in a completion webhook's body, found without keeping or parsing the body,
and checked to be RunPod-shaped: it goes into RunPod URLs and logs (docs/security.md).

The body is the job's status object with the whole output (megabytes of base64). Measured with
200 jobs finishing together and 1 MP outputs (`bench/full_path.py`): each body held whole and
parsed on the event loop (~6 ms each) cost hundreds of MB and stalled every job for a second.
"""

import json
import re
from collections import deque

ID_KEY = b'"id"'
ID_AT = re.compile(rb'"id"\s*:\s*')  # the key, where its value starts
# What a RunPod job id looks like: a uuid with a region suffix (`c80ffee4-...-u1`), `sync-`
# first for /runsync, as the local endpoint (devtools/endpoint) makes them too. The id goes
# into RunPod URLs (`/cancel/{id}`, with our API key) and into logs: nothing else is taken.
RUNPOD_ID = re.compile(r"[A-Za-z0-9-]{1,100}")
# A string value, escapes and all, up to a length that holds any RunPod-shaped id.
STRING_VALUE = re.compile(rb'"(?:[^"\\]|\\.){0,256}"')
ID_MAX_BYTES = 2 + 2 * 256  # what STRING_VALUE may match, escapes included
KEPT_BYTES = 64 * 1024


class MalformedRunPodId(ValueError):
    """A webhook body whose `"id"` is not a RunPod job id: the body is refused, not acted on."""

    def __init__(self) -> None:
        super().__init__("its id is not a RunPod job id (letters, digits and dashes)")


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
        """`checked_id`, with a malformed id taken as none."""
        try:
            return self.checked_id()
        except MalformedRunPodId:
            return None

    def checked_id(self) -> str | None:
        """The RunPod job id: from the whole body when it was small enough to keep, else from
        the one `"id"` key (in the kept head or tail); None when it cannot be told;
        MalformedRunPodId when the body names an id that is not RunPod's."""
        if self.size <= KEPT_BYTES:
            return checked_id_of_body(self.head)
        if self.keys != 1:
            return None
        for kept in (self.head, self.tail):
            if (key := ID_AT.search(kept)) is not None:
                value = STRING_VALUE.match(kept, key.end())
                if value is None and kept is self.head and len(kept) - key.end() < ID_MAX_BYTES:
                    return None  # the value runs past the kept head: it cannot be told
                raw = value.group() if value else kept[key.end() : key.end() + 4]  # or null
                return checked_id_of({"id": _value(raw)})
        return None


def _value(raw: bytes) -> object:
    """The JSON value raw holds; raw itself (bytes, never an id) when it holds none."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def runpod_id_from_body(body: bytes) -> str | None:
    """The RunPod job id in a whole (small) webhook body, if it has a usable one."""
    try:
        return checked_id_of_body(body)
    except MalformedRunPodId:
        return None


def checked_id_of_body(body: bytes) -> str | None:
    """checked_id_of a whole (small) webhook body; None when it is not JSON."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None  # the webhook still wakes the job: its poll reads the status itself
    return checked_id_of(parsed)


def runpod_id_of(status: object) -> str | None:
    """The RunPod job id of a parsed status object, if it has a usable one."""
    try:
        return checked_id_of(status)
    except MalformedRunPodId:
        return None


def checked_id_of(status: object) -> str | None:
    """The RunPod job id of a parsed status object; None when it names none (no `"id"`, or
    null); MalformedRunPodId when its id is anything but a RunPod-shaped string."""
    job_id = status.get("id") if isinstance(status, dict) else None
    if job_id is None:
        return None
    if not isinstance(job_id, str) or RUNPOD_ID.fullmatch(job_id) is None:
        raise MalformedRunPodId
    return job_id
