"""Where output images go: Supabase Storage, or a local folder the HTTP app serves."""

import asyncio
import io
import uuid
from pathlib import Path
from typing import Protocol

import httpx
from storage3 import AsyncStorageClient
from storage3.exceptions import StorageApiError

from orchestrator.errors import NeedsOperator, Permanent, Transient
from orchestrator.http_clients import AnswerOverCap, http_client, over_cap

OUTPUT_NAME = "output.png"
# Storage's answers are a few hundred bytes of JSON; a broken or hostile one is not read past this.
ANSWER_MAX_BYTES = 1024 * 1024


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

    async def remove(self, path: str) -> None:
        """Delete the object at `path`, if there is one."""
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

    async def remove(self, path: str) -> None:
        """Delete the file, if there is one."""
        await asyncio.to_thread((self.root / self.bucket / path).unlink, missing_ok=True)


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(data)
    partial.replace(target)


class SupabaseStorage:
    """Supabase Storage's object API through storage3's async client (upsert, image/png)."""

    def __init__(self, client: AsyncStorageClient, bucket: str) -> None:
        self._client = client
        self.bucket = bucket

    async def put_png(self, path: str, data: bytes) -> str:
        """Upload with upsert (a retried upload overwrites) and return the public URL."""
        bucket = self._client.from_(self.bucket)
        # A reader we close after, not the bytes: httpx's request and response form reference
        # cycles, and the multipart field kept the whole image alive until the next full
        # garbage collection (100 MB of peak RSS with 200 jobs, bench/full_path.py).
        image: io.BufferedReader = io.BufferedReader(io.BytesIO(data))
        try:
            await bucket.upload(path, image, {"content-type": "image/png", "upsert": "true"})
        except StorageApiError as exc:
            raise _storage_error(exc) from exc
        except httpx.HTTPError as exc:
            raise _unanswered(exc) from exc
        finally:
            image.close()
        return str(await bucket.get_public_url(path))

    async def remove(self, path: str) -> None:
        """Delete the object (Storage answers 200 whether or not it was there)."""
        try:
            await self._client.from_(self.bucket).remove([path])
        except StorageApiError as exc:
            raise _storage_error(exc) from exc
        except httpx.HTTPError as exc:
            raise _unanswered(exc) from exc

    async def aclose(self) -> None:
        """Close the HTTP client supabase_storage() opened for it."""
        await self._client.session.aclose()


def _unanswered(exc: httpx.HTTPError) -> Transient:
    if isinstance(exc, AnswerOverCap):
        return Transient(over_cap("Supabase Storage", ANSWER_MAX_BYTES))
    return Transient(f"Supabase Storage unreachable: {type(exc).__name__}")


def _storage_error(exc: StorageApiError) -> Exception:
    try:
        status = int(exc.status)
    except (TypeError, ValueError):
        status = 500
    if status in (401, 403):
        return NeedsOperator(
            f"Supabase Storage refused the key ({status}); check SUPABASE_SERVICE_ROLE_KEY",
            "storage",
        )
    if status == 404:
        return Permanent(f"Supabase Storage: {exc.message}")
    return Transient(f"Supabase Storage answered {status}: {exc.message}")


def supabase_storage(
    url: str, service_key: str, bucket: str, timeout_s: float = 60.0
) -> SupabaseStorage:
    """A SupabaseStorage for a project URL and its service-role key."""
    headers = {"apikey": service_key, "Authorization": f"Bearer {service_key}"}
    client = AsyncStorageClient(
        f"{url.rstrip('/')}/storage/v1/",
        headers,
        http_client=http_client(timeout_s, max_answer_bytes=ANSWER_MAX_BYTES),
    )
    return SupabaseStorage(client, bucket)
