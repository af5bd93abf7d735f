"""Where output images go: Supabase Storage, or a local folder the HTTP app serves."""

import asyncio
import uuid
from pathlib import Path
from typing import Protocol

from orchestrator.errors import Permanent

OUTPUT_NAME = "output.png"


def output_path(user_id: str, work_id: str) -> str:
    """`{user_id}/{work_id}/output.png`, built from validated UUIDs only."""
    try:
        user, work = uuid.UUID(user_id), uuid.UUID(work_id)
    except ValueError:
        raise Permanent("Invalid parameter: user_id and work_id must be UUIDs") from None
    return f"{user}/{work}/{OUTPUT_NAME}"


class Storage(Protocol):
    """Stores a PNG under a path in the bucket and says where the public can read it."""

    bucket: str

    async def put_png(self, path: str, data: bytes) -> str:
        """Upload (overwriting) and return the public URL."""
        ...


class LocalStorage:
    """A folder per bucket; the orchestrator's HTTP app serves it under /storage/."""

    def __init__(self, root: Path, bucket: str, public_base_url: str) -> None:
        self.root = root
        self.bucket = bucket
        self._public_base_url = public_base_url.rstrip("/")

    async def put_png(self, path: str, data: bytes) -> str:
        """Write the file atomically and return its URL."""
        target = self.root / self.bucket / path
        await asyncio.to_thread(_write_atomically, target, data)
        return f"{self._public_base_url}/storage/{self.bucket}/{path}"


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(data)
    partial.replace(target)
