"""RunPod Serverless's REST API (`/run`, `/status`, `/cancel`) over an injected httpx client
(runpod_http's: httpx's interface on aiohttp's transport, orchestrator/http_clients.py)."""

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
from aiolimiter import AsyncLimiter
from msgspec import UNSET, UnsetType

from orchestrator.cpu import CpuLane
from orchestrator.errors import (
    NeedsOperator,
    Permanent,
    RunPodJobGone,
    SubmissionUnknown,
    Transient,
)
from orchestrator.http_clients import http_client, over_cap
from orchestrator.metrics import Metrics
from orchestrator.policy import window_bucket

JSON_ON_LOOP_MAX_BYTES = 64 * 1024
# The most of one answer read (RUNPOD_WEBHOOK_MAX_BYTES, the completion webhook's cap too): a
# finished job's carries its image (2.8 MB for 1 MP; at the 2 MP the contract allows, an
# incompressible RGBA PNG is 16 MB, 21 MB as base64), and a broken or hostile endpoint's
# endless answer would otherwise be read into memory until the request's deadline.
ANSWER_MAX_BYTES = 32 * 1024 * 1024
CALL_ANSWER_MAX_BYTES = 1024 * 1024  # `/run`'s and `/cancel`'s answers: about 100 bytes
# Requests to RunPod under way at once (runpod_http's connection limit). Waiting for a turn
# here costs no pool bookkeeping (httpx's own pool scanned every connection for every queued
# request: a third of klein serve's CPU with 1,000 jobs in flight, bench/full_path.py), and it
# ends: every request ahead has the client's timeout.
CONNECTIONS = 64
RUN_PER_10S = 900  # RunPod allows 1,000 /run calls and 2,000 /status calls per 10 s
STATUS_PER_10S = 1800
RUN_BURST_SHARE = 0.5  # of /run's budget may go at once: a batch inserted together
STATUS_BURST_SHARE = 0.1  # of /status's: polls are steady
FINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
# What a worker's progress report may carry into works.progress; anything else is dropped.
STAGE_MAX_CHARS = 40
NODE_MAX_CHARS = 80
# RunPod's `error` is the worker's text (or anyone's who holds a job's webhook URL): stored as the
# work's error_message and logged, so kept to a readable sentence's size.
ERROR_MAX_CHARS = 2000
STEPS_MAX = 10_000
QUEUED_STAGE = "queued on RunPod"
RUNNING_STAGE = "running"


@dataclass(frozen=True)
class Progress:
    """What a RunPod job is doing now, as the handler's progress_update reported it."""

    stage: str
    node: str | None = None
    step: int | None = None
    steps: int | None = None

    def as_json(self, at: datetime) -> dict[str, Any]:
        """The works.progress shape: every key present, `at` in ISO 8601 UTC."""
        stamp = at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return {
            "stage": self.stage,
            "node": self.node,
            "step": self.step,
            "steps": self.steps,
            "at": stamp,
        }


@dataclass(frozen=True)
class RunPodJob:
    """One `/status` answer."""

    id: str
    status: str
    output: Any = None
    error: str | None = None
    progress: Progress | None = None
    delay_time: object = None  # ms in RunPod's queue (`delayTime`), when reported
    execution_time: object = None  # ms of the worker's run (`executionTime`), when reported
    # A `peek` answer too large to read (status UNREAD): only a finished job's output is that
    # large, so the job is over, and `status` reads it in an output slot (orchestrator/outputs.py).
    unread: bool = False
    in_slot: bool = False  # this answer's output holds an output slot until it is unpacked

    @property
    def finished(self) -> bool:
        """True for COMPLETED, FAILED, CANCELLED and TIMED_OUT."""
        return self.status in FINAL_STATUSES


def no_room() -> bool:
    """`room` for a read that is never to pass its cap."""
    return False


def endpoint_budget(replicas: int) -> tuple[int, int]:
    """(/run, /status) calls per 10 s for one of `replicas` processes calling one endpoint:
    RunPod's limits are the endpoint's, so together they keep under them (REPLICAS)."""
    return RUN_PER_10S // replicas, STATUS_PER_10S // replicas


def runpod_http(timeout_s: float) -> httpx.AsyncClient:
    """The HTTP client for RunPodClient: CONNECTIONS at once, idle ones kept for reuse."""
    return http_client(timeout_s, httpx.Limits(max_connections=CONNECTIONS))


class RunPodClient:
    """One endpoint; every call rate-limited below RunPod's own limits."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        endpoint_id: str,
        api_key: str | None,
        *,
        run_per_10s: int = RUN_PER_10S,
        status_per_10s: int = STATUS_PER_10S,
        metrics: Metrics | None = None,
        cpu: CpuLane | None = None,
        max_answer_bytes: int = ANSWER_MAX_BYTES,
    ) -> None:
        self._http = http
        self._max_answer_bytes = max_answer_bytes
        self._base = f"{base_url.rstrip('/')}/{segment(endpoint_id)}"
        self._endpoint_id = endpoint_id
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # aiolimiter's bucket holds `max_rate` at once and refills it every `time_period`, so
        # (1800, 10) let 1,800 go at once plus 1,800 more within the same 10 s (3,600: over
        # RunPod's 2,000). window_bucket keeps any 10 s within the budget.
        self._run_limit = AsyncLimiter(*window_bucket(run_per_10s, 10, RUN_BURST_SHARE))
        self._status_limit = AsyncLimiter(*window_bucket(status_per_10s, 10, STATUS_BURST_SHARE))
        self._metrics = metrics
        self._cpu = cpu or CpuLane()
        self._requests = asyncio.Semaphore(CONNECTIONS)

    async def _call(self, method: str, path: str, limiter: AsyncLimiter, **kwargs: Any) -> Any:
        async with limiter, self._requests:
            try:
                async with self._http.stream(
                    method, self._base + path, headers=self._headers, **kwargs
                ) as response:
                    self._count(str(response.status_code))
                    raise_for_status(response, path, self._endpoint_id)
                    body = await read_at_most(response, None, limit=CALL_ANSWER_MAX_BYTES)
            except httpx.HTTPError as exc:
                self._count(type(exc).__name__)
                raise transport_error(exc, path) from exc
            except AnswerTooLarge as exc:
                if path == "/run":  # it reached RunPod, which may have the job
                    raise SubmissionUnknown(f"{exc}; RunPod may have the job") from exc
                raise
        try:
            return await self.parse_json(body or b"")
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            raise Transient(f"RunPod sent an unreadable answer on {path}") from exc

    async def parse_json(self, body: bytes) -> dict[str, Any]:
        """A RunPod answer (or completion webhook body) as `decode_answer` reads it. A large
        body (a finished job's base64 image) is parsed in the CPU lane, so that many jobs
        finishing at once do not stall the event loop. msgspec's parser: a 2.8 MB answer in
        1.6 ms, json.loads's 4 ms (which also holds the GIL throughout). Its errors are
        ValueErrors (RecursionError for absurd nesting), as json's are."""
        if len(body) <= JSON_ON_LOOP_MAX_BYTES:
            return decode_answer(body)
        return await self._cpu.run(decode_answer, body)

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.calls.labels("runpod", outcome).inc()

    async def run(self, job_input: Mapping[str, Any], webhook: str | None = None) -> str:
        """Submit a job; returns RunPod's job id."""
        body: dict[str, Any] = {"input": dict(job_input)}
        if webhook:
            body["webhook"] = webhook
        answer = await self._call("POST", "/run", self._run_limit, json=body)
        if not isinstance(answer, dict) or not answer.get("id"):
            raise Transient("RunPod accepted the job without an id")
        return str(answer["id"])

    async def status(self, job_id: str) -> RunPodJob:
        """The job's status, read whole; RunPodJobGone once RunPod has forgotten it."""
        body = await self._status_body(job_id, None) or b""  # no cap: always bytes
        return await self._parsed_status(job_id, body)

    async def peek(self, job_id: str, room: Callable[[], bool] = no_room) -> RunPodJob:
        """The job's status. An answer over JSON_ON_LOOP_MAX_BYTES carries an output
        (megabytes): it is read on (and parsed in the CPU lane) when `room()` says there is room
        for it now, else left unread and said `unread`, for `status` to read when there is."""
        body = await self._status_body(job_id, JSON_ON_LOOP_MAX_BYTES, room)
        if body is None:
            return RunPodJob(id=job_id, status="UNREAD", unread=True)
        return await self._parsed_status(job_id, body)

    async def _parsed_status(self, job_id: str, body: bytes) -> RunPodJob:
        try:
            return parse_status(job_id, await self.parse_json(body))
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            raise Transient("RunPod sent an unreadable answer on /status") from exc

    async def _status_body(
        self, job_id: str, max_bytes: int | None, room: Callable[[], bool] = no_room
    ) -> bytes | None:
        """`/status`'s body (None past `max_bytes`), streamed into bytes of our own. A response
        read with `.content` keeps it in a reference cycle (the response and its stream), so a
        finished job's 2.8 MB answer lived until the next full garbage collection: most of
        klein serve's peak RSS with 200 jobs (bench/full_path.py)."""
        path = f"/status/{segment(job_id)}"
        async with self._status_limit, self._requests:
            try:
                async with self._http.stream(
                    "GET", self._base + path, headers=self._headers
                ) as response:
                    self._count(str(response.status_code))
                    raise_for_status(response, path, self._endpoint_id)
                    return await read_at_most(
                        response, max_bytes, room, limit=self._max_answer_bytes
                    )
            except httpx.HTTPError as exc:
                self._count(type(exc).__name__)
                raise transport_error(exc, "/status") from exc
            except AnswerTooLarge as exc:
                raise AnswerTooLarge(f"{exc} (RUNPOD_WEBHOOK_MAX_BYTES)") from exc

    async def cancel(self, job_id: str) -> None:
        """Ask RunPod to cancel; a job it no longer knows needs no cancelling."""
        try:
            await self._call("POST", f"/cancel/{segment(job_id)}", self._run_limit)
        except RunPodJobGone:
            return


def segment(value: str) -> str:
    """value as one URL path segment (RunPod ids and the endpoint id come from outside: an id
    `../purge-queue` must not reach another path with our API key). "." and ".." are refused:
    URL parsers resolve them, percent-encoded or not."""
    if value in ("", ".", ".."):
        raise Permanent(f"{value!r} is not a RunPod id")
    return quote(value, safe="")


Scalar = str | int | float | bool | None


class _Output(msgspec.Struct):
    """What is read of a job's `output`: the handler's result (section 2 of docs/DESIGN.md)
    and its progress reports. Other keys (diagnostics) are skipped unread."""

    image: Scalar | UnsetType = UNSET
    seed: Scalar | UnsetType = UNSET
    prompt_id: Scalar | UnsetType = UNSET
    width: Scalar | UnsetType = UNSET
    height: Scalar | UnsetType = UNSET
    error: Scalar | UnsetType = UNSET
    stage: Scalar | UnsetType = UNSET
    node: Scalar | UnsetType = UNSET
    step: Scalar | UnsetType = UNSET
    steps: Scalar | UnsetType = UNSET


class _Answer(msgspec.Struct, rename="camel"):
    """What is read of a RunPod answer; `output` and `error` are looked at only once the rest
    holds (`decode_answer`)."""

    id: Scalar | UnsetType = UNSET
    status: Scalar | UnsetType = UNSET
    output: msgspec.Raw = msgspec.Raw()
    error: msgspec.Raw = msgspec.Raw()
    delay_time: Scalar | UnsetType = UNSET  # delayTime
    execution_time: Scalar | UnsetType = UNSET  # executionTime


class _UsualAnswer(msgspec.Struct, rename="camel"):
    """A RunPod answer of the usual shape, read in one pass: `output` the handler's result or
    progress (or a scalar), `error` a scalar."""

    id: Scalar | UnsetType = UNSET
    status: Scalar | UnsetType = UNSET
    output: _Output | Scalar | UnsetType = UNSET
    error: Scalar | UnsetType = UNSET
    delay_time: Scalar | UnsetType = UNSET
    execution_time: Scalar | UnsetType = UNSET


UNREADABLE_OUTPUT = "(an output of an unexpected shape)"


def decode_answer(body: bytes) -> dict[str, Any]:
    """A `/status`, `/run` or `/cancel` answer (a completion webhook's body too) as a dict of
    the keys read here, each a JSON scalar, `output` a dict of scalars. Typed, so that any
    other shape is refused at its first byte or skipped unread: a 32 MiB body of `[[],[],...]`
    parsed generically grew the process by ~700 MB (docs/security.md); here, by nothing.
    ValueError (msgspec's) when it is no JSON object; RecursionError for absurd nesting.

    The usual answer is read in one pass; only one that is not (an output or error of another
    shape, or no JSON) is read again in two, `output` and `error` apart. One pass spares a
    finished job's 2.8 MB of base64 a second scan: 1.0 ms against 1.8 (1168x880 output)."""
    try:
        usual = msgspec.json.decode(body, type=_UsualAnswer)
    except (ValueError, RecursionError):
        return _decode_unusual(body)
    found = _fields(usual)
    if isinstance(usual.output, msgspec.Struct):
        found["output"] = _fields(usual.output)
    return found


def _decode_unusual(body: bytes) -> dict[str, Any]:
    """decode_answer's reading when `output` or `error` is of an unexpected shape: the rest is
    kept, an output becomes UNREADABLE_OUTPUT and an error its JSON text."""
    answer = msgspec.json.decode(body, type=_Answer)
    found = _fields(answer)
    if answer.output:
        found["output"] = _loose(answer.output, _Output | Scalar, UNREADABLE_OUTPUT)
    if answer.error:  # RunPod's is a string; anything else is kept as its JSON text
        error = _loose(answer.error, Scalar, UNSET)
        found["error"] = bytes(answer.error).decode(errors="replace") if error is UNSET else error
    return found


def _loose(raw: msgspec.Raw, kind: Any, otherwise: object) -> object:
    """raw as kind (a struct as a dict of its keys present); `otherwise` when it is not."""
    try:
        value = msgspec.json.decode(raw, type=kind)
    except (ValueError, RecursionError):
        return otherwise
    return _fields(value) if isinstance(value, msgspec.Struct) else value


def _fields(struct: msgspec.Struct) -> dict[str, Any]:
    """struct's fields that the JSON had, by their JSON names (Raw ones left to the caller)."""
    names = zip(struct.__struct_fields__, struct.__struct_encode_fields__, strict=True)
    return {
        key: value
        for name, key in names
        if (value := getattr(struct, name)) is not UNSET and not isinstance(value, msgspec.Raw)
    }


class AnswerTooLarge(Permanent):
    """An answer over the client's limit: read no further, and not worth asking for again."""


async def read_at_most(
    response: httpx.Response,
    max_bytes: int | None,
    room: Callable[[], bool] = no_room,
    *,
    limit: int | None = None,
) -> bytes | None:
    """The body, or None (the rest left unread) once it passes `max_bytes` (None: no cap)
    unless `room()`, asked then, lifts the cap; past `limit` (None: none), AnswerTooLarge."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit():
        _within(int(declared), limit)
    if max_bytes is not None and declared.isdigit() and int(declared) > max_bytes:
        if not room():
            return None
        max_bytes = None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        _within(size, limit)
        if max_bytes is not None and size > max_bytes:
            if not room():
                return None
            max_bytes = None
        chunks.append(chunk)
    return b"".join(chunks)


def _within(size: int, limit: int | None) -> None:
    if limit is not None and size > limit:
        raise AnswerTooLarge(over_cap("RunPod", limit))


def parse_status(job_id: str, answer: object) -> RunPodJob:
    """A RunPodJob from a `/status` body (or a completion webhook's body)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("status"), str):
        raise Transient("RunPod sent a status without a status field")
    error = answer.get("error")
    return RunPodJob(
        id=str(answer.get("id") or job_id),
        status=answer["status"],
        output=answer.get("output"),
        error=worker_error(error),
        progress=parse_progress(answer["status"], answer.get("output")),
        delay_time=answer.get("delayTime"),
        execution_time=answer.get("executionTime"),
    )


def worker_error(error: object) -> str | None:
    """RunPod's `error` as one line for a person, the database and the log: untrusted text, so
    its whitespace folded, control and invisible format characters written as escapes (no
    forged log lines, no terminal sequences, no reversed text), at most ERROR_MAX_CHARS."""
    if error is None:
        return None
    text = " ".join(str(error)[: 4 * ERROR_MAX_CHARS].split())
    text = "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 1] + "…"


def parse_progress(status: str, output: object) -> Progress | None:
    """The progress a waiting job's `/status` shows: "queued on RunPod" while IN_QUEUE; while
    IN_PROGRESS the handler's last report (`output`), or just "running" when that is missing or
    unusable. The worker's report is untrusted: capped, typed, anything off is dropped."""
    if status == "IN_QUEUE":
        return Progress(QUEUED_STAGE)
    if status != "IN_PROGRESS":
        return None
    report = output if isinstance(output, dict) else {}
    step, steps = _int(report.get("step")), _int(report.get("steps"))
    if step is None or steps is None or not 0 <= step <= steps <= STEPS_MAX:
        step = steps = None
    return Progress(
        stage=_text(report.get("stage"), STAGE_MAX_CHARS) or RUNNING_STAGE,
        node=_text(report.get("node"), NODE_MAX_CHARS),
        step=step,
        steps=steps,
    )


def _text(value: object, max_chars: int) -> str | None:
    if not isinstance(value, str) or len(value) > max_chars:
        return None
    text = " ".join(value.split())
    return text if text and text.isprintable() else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def transport_error(exc: httpx.HTTPError, path: str) -> Transient:
    """A request that got no answer. Only a `/run` that may have reached RunPod is uncertain:
    a connection never made sent nothing, so retrying it cannot start a second job."""
    name = type(exc).__name__
    if path == "/run" and not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return SubmissionUnknown(f"RunPod did not answer /run ({name}); it may have the job")
    return Transient(f"RunPod unreachable: {name}")


def raise_for_status(response: httpx.Response, path: str, endpoint_id: str = "") -> None:
    """Translate RunPod's HTTP errors into what the flow should do."""
    code = response.status_code
    if code < 400:
        return
    if code == 404 and path.startswith(("/status/", "/cancel/")):
        raise RunPodJobGone(f"RunPod does not know job {path.rsplit('/', 1)[-1]}")
    if code == 404:
        raise NeedsOperator(
            f"RunPod has no endpoint {endpoint_id!r} (HTTP 404 on run); check RUNPOD_ENDPOINT_ID",
            "runpod",
        )
    if code == 429:
        raise Transient("RunPod rate limit (429)", retry_after_s=_retry_after(response))
    if code in (401, 403):
        raise NeedsOperator(
            f"RunPod refused the API key (HTTP {code}); check RUNPOD_API_KEY", "runpod"
        )
    if code == 402:
        raise NeedsOperator(
            "RunPod is out of credit (HTTP 402); add funds to the account", "runpod"
        )
    if code >= 500 or code == 408:
        raise Transient(f"RunPod answered HTTP {code} on {path.split('/')[1]}")
    raise Permanent(f"RunPod refused the request (HTTP {code} on {path.split('/')[1]})")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return float(value)
    except ValueError:
        return None
