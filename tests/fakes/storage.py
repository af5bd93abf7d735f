"""A Supabase Storage object API server for tests (the routes and bodies storage3 uses).

Uploads (`POST`, with `x-upsert`) and updates (`PUT`) under `/storage/v1/object/{bucket}/{path}`,
multipart as storage3 sends them or a raw body, land in `server.objects`; deletes
(`DELETE /storage/v1/object/{bucket}` with `{"prefixes": [...]}`) answer the removed objects as
Storage does (none found: an empty list, still 200); public reads are served
under `/storage/v1/object/public/{bucket}/{path}`. Errors have Supabase's shape and statuses: the
gateway answers 401 without a valid `apikey`; storage answers HTTP 400 (500 for internal errors)
with the meaningful code in the body's `statusCode` (`"403"`, `"404"`, `"409"`), which is what
storage3's `StorageApiError.status` carries.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterable
from typing import Any, NamedTuple

from aiohttp import BodyPartReader, web

from devtools.background_server import BackgroundServer, Scripted, encode_body

DEFAULT_SERVICE_KEY = "test-service-role-key"
DEFAULT_BUCKETS = ("works",)
API_PREFIX = "/storage/v1"
DEFAULT_CACHE_CONTROL = "max-age=3600"


class StoredObject(NamedTuple):
    """What an upload left in a bucket."""

    data: bytes
    content_type: str


class Upload(NamedTuple):
    """One accepted write, for assertions on how the client called the API."""

    method: str
    bucket: str
    path: str
    upsert: bool
    content_type: str
    cache_control: str
    size: int


# --------------------------------------------------------------------------- pure helpers


def storage_error(status_code: int, code: str, error: str, message: str) -> dict[str, str]:
    """Supabase Storage's error body (statusCode is a string)."""
    return {"statusCode": str(status_code), "code": code, "error": error, "message": message}


def error_status(status_code: int) -> int:
    """The HTTP status Storage sends for an error whose body says `status_code`."""
    return 500 if status_code == 500 else 400


def is_upsert(header: str | None) -> bool:
    """Storage's reading of `x-upsert`: only the exact string "true" means overwrite."""
    return header == "true"


def cache_control_value(raw: str | None) -> str:
    """Storage stores a bare number of seconds as `max-age=<n>`, anything else as given."""
    if not raw:
        return DEFAULT_CACHE_CONTROL
    return f"max-age={raw}" if re.fullmatch(r"\d+", raw) else raw


def public_url(base_url: str, bucket: str, path: str) -> str:
    """The URL Supabase gives a public object: `{base}/storage/v1/object/public/{bucket}/{path}`."""
    return f"{base_url.rstrip('/')}{API_PREFIX}/object/public/{bucket}/{path.lstrip('/')}"


NO_SUCH_BUCKET = storage_error(404, "NoSuchBucket", "Bucket not found", "Bucket not found")
NO_SUCH_KEY = storage_error(404, "NoSuchKey", "not_found", "Object not found")
DUPLICATE = storage_error(409, "KeyAlreadyExists", "Duplicate", "The resource already exists")


# --------------------------------------------------------------------------- the server


class StorageServer(BackgroundServer):
    """Supabase Storage's object API on 127.0.0.1; `url` plays the role of SUPABASE_URL."""

    thread_name = "storage-test-server"

    def __init__(
        self,
        *,
        service_key: str = DEFAULT_SERVICE_KEY,
        buckets: Iterable[str] = DEFAULT_BUCKETS,
        port: int = 0,
    ) -> None:
        super().__init__(port=port)
        self.service_key = service_key
        self.buckets = set(buckets)
        self.objects: dict[tuple[str, str], StoredObject] = {}
        self.cache_control: dict[tuple[str, str], str] = {}
        self.uploads: list[Upload] = []
        self.calls: list[tuple[str, str]] = []
        self.writing = 0  # API writes arrived and not yet answered
        self.most_writing = 0  # the most there were at once
        self._lock = threading.Lock()

    @property
    def storage_url(self) -> str:
        """The storage API root as storage3's AsyncStorageClient wants it (trailing slash)."""
        return f"{self.url}{API_PREFIX}/"

    def public_url(self, bucket: str, path: str) -> str:
        """The public URL of `path` in `bucket` on this server."""
        return public_url(self.url, bucket, path)

    def fail_next(
        self,
        status: int,
        times: int = 1,
        body: dict[str, Any] | str | bytes | None = None,
        *,
        delay_s: float = 0.0,
    ) -> None:
        """Answer the next `times` API writes with `status` (after `delay_s`).

        The default body is Storage's internal error with `statusCode` = `status`; pass a str
        (e.g. a gateway's HTML page) or a dict to send something else. Public reads are never
        scripted.
        """
        default = storage_error(status, "InternalError", "internal", "Internal Server Error")
        raw, content_type = encode_body(default if body is None else body)
        self.script.push(Scripted(status, raw, content_type, {}, delay_s), times)

    def slow_next(self, delay_s: float, times: int = 1) -> None:
        """Answer the next `times` API writes as usual, each after `delay_s`."""
        self.script.push(Scripted(None, delay_s=delay_s), times)

    def reset(self) -> None:
        """Empty the buckets, the records and the queued answers."""
        with self._lock:
            self.objects.clear()
            self.cache_control.clear()
        self.uploads.clear()
        self.calls.clear()
        self.most_writing = 0
        self.script.clear()

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{API_PREFIX}/object/public/{{bucket}}/{{path:.+}}", self._get_public),
            web.post(f"{API_PREFIX}/object/{{bucket}}/{{path:.+}}", self._counted_write),
            web.put(f"{API_PREFIX}/object/{{bucket}}/{{path:.+}}", self._counted_write),
            web.delete(f"{API_PREFIX}/object/{{bucket}}", self._delete),
        ]

    # ---- handlers

    async def _get_public(self, request: web.Request) -> web.Response:
        bucket, path = request.match_info["bucket"], request.match_info["path"]
        self.calls.append((request.method, request.path))
        if bucket not in self.buckets:
            return _error(NO_SUCH_BUCKET)
        with self._lock:
            stored = self.objects.get((bucket, path))
            cache_control = self.cache_control.get((bucket, path), DEFAULT_CACHE_CONTROL)
        if stored is None:
            return _error(NO_SUCH_KEY)
        data, content_type = stored
        response = web.Response(body=data, headers={"Cache-Control": cache_control})
        response.headers["Content-Type"] = content_type
        return response

    async def _counted_write(self, request: web.Request) -> web.Response:
        """_write, counting the writes in flight (the server's one loop: no lock needed)."""
        self.writing += 1
        self.most_writing = max(self.most_writing, self.writing)
        try:
            return await self._write(request)
        finally:
            self.writing -= 1

    async def _write(self, request: web.Request) -> web.Response:
        bucket, path = request.match_info["bucket"], request.match_info["path"]
        self.calls.append((request.method, request.path))
        if (refusal := self._auth_refusal(request)) is not None:
            return refusal
        data, content_type, cache_control = await _read_upload(request)
        if (scripted := await self._scripted_answer()) is not None:
            return scripted
        if bucket not in self.buckets:
            return _error(NO_SUCH_BUCKET)
        upsert = request.method == "PUT" or is_upsert(request.headers.get("x-upsert"))
        with self._lock:
            exists = (bucket, path) in self.objects
            if request.method == "PUT" and not exists:
                return _error(NO_SUCH_KEY)
            if exists and not upsert:
                return _error(DUPLICATE)
            self.objects[(bucket, path)] = StoredObject(data, content_type)
            self.cache_control[(bucket, path)] = cache_control
        record = Upload(
            request.method, bucket, path, upsert, content_type, cache_control, len(data)
        )
        self.uploads.append(record)
        return web.json_response({"Id": str(uuid.uuid4()), "Key": f"{bucket}/{path}"})

    async def _delete(self, request: web.Request) -> web.Response:
        bucket = request.match_info["bucket"]
        self.calls.append((request.method, request.path))
        if (refusal := self._auth_refusal(request)) is not None:
            return refusal
        if (scripted := await self._scripted_answer()) is not None:
            return scripted
        if bucket not in self.buckets:
            return _error(NO_SUCH_BUCKET)
        body = await request.json()
        prefixes = body.get("prefixes") if isinstance(body, dict) else None
        if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
            return _error(storage_error(400, "InvalidRequest", "invalid", "prefixes: array"))
        with self._lock:
            removed = [p for p in prefixes if self.objects.pop((bucket, p), None) is not None]
        return web.json_response([{"name": p, "bucket_id": bucket} for p in removed])

    def _auth_refusal(self, request: web.Request) -> web.Response | None:
        """The gateway's 401 without the right `apikey`, Storage's 403 without the right JWT."""
        apikey = request.headers.get("apikey") or request.query.get("apikey")
        if not apikey:
            return web.json_response({"message": "No API key found in request"}, status=401)
        if apikey != self.service_key:
            return web.json_response({"message": "Invalid API key"}, status=401)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.service_key:
            message = "invalid signature" if token.strip() else "Invalid Compact JWS"
            return _error(storage_error(403, "AccessDenied", "Unauthorized", message))
        return None


async def _read_upload(request: web.Request) -> tuple[bytes, str, str]:
    """(bytes, content type, cache control) from a multipart upload or a raw body."""
    if request.content_type != "multipart/form-data":
        data = await request.read()
        content_type = request.headers.get("Content-Type", "application/octet-stream")
        return data, content_type, cache_control_value(request.headers.get("Cache-Control"))
    reader = await request.multipart()
    file: bytes | None = None
    content_type, cache_control = "application/octet-stream", None
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.filename is not None and file is None:
            file = bytes(await part.read())
            content_type = part.headers.get("Content-Type", content_type)
        elif part.name == "cacheControl":
            cache_control = await part.text()
        else:
            await part.release()
    return file or b"", content_type, cache_control_value(cache_control)


def _error(body: dict[str, str]) -> web.Response:
    return web.json_response(body, status=error_status(int(body["statusCode"])))
