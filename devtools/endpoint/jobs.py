"""A local endpoint job and every decision about it, as pure functions (no clock, no I/O).

Life of a job (times from the endpoint's clock, in seconds):

    IN_QUEUE --worker takes it--> IN_PROGRESS --output--> COMPLETED | FAILED
        |                              |--executionTimeout--> TIMED_OUT
        |--cancel--> CANCELLED         |--cancel--> CANCELLED
        |--purge-queue / ttl--> (forgotten: /status answers 404)

A finished job is kept `retention_s`, and no job outlives `ttl_s` from submission (RunPod's TTL is
the job's whole life: queued, running or finished); after either, it is forgotten.
"""

from __future__ import annotations

import json
import traceback
import uuid
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any


class RunPodStatus(StrEnum):
    """RunPod's job statuses."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"


TERMINAL = frozenset(
    {RunPodStatus.COMPLETED, RunPodStatus.FAILED, RunPodStatus.CANCELLED, RunPodStatus.TIMED_OUT}
)


class BadRequest(ValueError):
    """The request body is not a job RunPod would accept; the message says why."""


@dataclass(frozen=True)
class JobRequest:
    """A validated `/run` or `/runsync` body."""

    input: dict[str, Any]
    webhook: str | None
    execution_timeout_s: float
    ttl_s: float


@dataclass(frozen=True)
class Outcome:
    """How a run ended: the status, and the `output` and `error` that /status shows."""

    status: RunPodStatus
    output: Any = None
    error: str | None = None


@dataclass(frozen=True)
class Job:
    """One job as the table holds it; transitions return a new Job."""

    id: str
    request: JobRequest
    retention_s: float
    submitted_at: float
    status: RunPodStatus = RunPodStatus.IN_QUEUE
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None
    output: Any = None
    error: str | None = None


def new_job_id(*, sync: bool) -> str:
    """A RunPod-like id: a uuid4 with a region suffix, `sync-` first for /runsync."""
    return f"{'sync-' if sync else ''}{uuid.uuid4()}-u1"


def _positive_ms(policy: dict[str, Any], key: str, default_ms: int) -> float:
    value = policy.get(key, default_ms)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadRequest(f"policy.{key} must be a positive integer (milliseconds)")
    return value / 1000


def parse_request(body: object, execution_timeout_ms: int, ttl_ms: int) -> JobRequest:
    """Validate a submit body: `input` object, optional `webhook` URL and `policy`."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    job_input = body.get("input")
    if not isinstance(job_input, dict):
        raise BadRequest("the request body needs an 'input' object")
    webhook = body.get("webhook")
    if webhook is not None and not (
        isinstance(webhook, str) and webhook.startswith(("http://", "https://"))
    ):
        raise BadRequest("webhook must be an http(s) URL")
    policy = body.get("policy") or {}
    if not isinstance(policy, dict):
        raise BadRequest("policy must be an object")
    return JobRequest(
        input=job_input,
        webhook=webhook,
        execution_timeout_s=_positive_ms(policy, "executionTimeout", execution_timeout_ms),
        ttl_s=_positive_ms(policy, "ttl", ttl_ms),
    )


@dataclass(frozen=True)
class Progress:
    """A running job's progress report; /status shows it as `output` while IN_PROGRESS."""

    output: Any


def read_result(body: object) -> Outcome | Progress:
    """A worker's job-done body, as the runpod SDK sends it: `{"status": "IN_PROGRESS",
    "output": ...}` from `progress_update`, else `{"output"?, "error"?, "stopPod"?}` (rp_job.py)."""
    if not isinstance(body, dict):
        return Outcome(RunPodStatus.FAILED, error="the worker sent a result that is not an object")
    if body.get("status") == RunPodStatus.IN_PROGRESS.value:
        return Progress(body.get("output"))
    error = body.get("error")
    if error:
        text = error if isinstance(error, str) else json.dumps(error)
        return Outcome(RunPodStatus.FAILED, body.get("output"), text)
    return Outcome(RunPodStatus.COMPLETED, body.get("output"))


def wants_new_worker(body: object) -> bool:
    """True when the worker asked to be replaced (the SDK's `stopPod`, from `refresh_worker`)."""
    return isinstance(body, dict) and body.get("stopPod") is True


def oversized_result(size_bytes: int, limit_bytes: int) -> Outcome:
    """The job's end when its worker's result is over the size RunPod takes."""
    return Outcome(
        RunPodStatus.FAILED,
        error=(
            f"the job's result is {size_bytes / 1e6:.1f} MB, over RunPod's "
            f"{limit_bytes / 1e6:g} MB limit; return a smaller output or upload it and return "
            "its URL"
        ),
    )


def outcome_of_output(output: object) -> Outcome:
    """RunPod's rule: a dict with a truthy "error" is FAILED; the rest of the dict stays output."""
    if not isinstance(output, dict):
        return Outcome(RunPodStatus.COMPLETED, output)
    rest = {k: v for k, v in output.items() if k not in ("error", "refresh_worker")}
    error = output.get("error")
    if error:
        return Outcome(
            RunPodStatus.FAILED, rest or None, error if isinstance(error, str) else str(error)
        )
    return Outcome(RunPodStatus.COMPLETED, rest or None)


def outcome_of_exception(exc: BaseException) -> Outcome:
    """A runner that raised: FAILED with the JSON error RunPod's SDK reports for a crash."""
    error = {
        "error_type": str(type(exc)),
        "error_message": str(exc),
        "error_traceback": "".join(traceback.format_exception(exc)),
    }
    return Outcome(RunPodStatus.FAILED, error=json.dumps(error))


def started(job: Job, now: float, worker_id: str) -> Job:
    """The job taken by a worker."""
    return replace(job, status=RunPodStatus.IN_PROGRESS, started_at=now, worker_id=worker_id)


def finished(job: Job, outcome: Outcome, now: float) -> Job:
    """The job ended with this outcome."""
    return replace(
        job, status=outcome.status, finished_at=now, output=outcome.output, error=outcome.error
    )


def forget_at(job: Job) -> float:
    """When the job leaves the table: its TTL, or earlier `retention_s` after it finished."""
    end_of_life = job.submitted_at + job.request.ttl_s
    if job.finished_at is None:
        return end_of_life
    return min(end_of_life, job.finished_at + job.retention_s)


def run_deadline_s(job: Job, now: float) -> float:
    """How long the running job may still take: its execution timeout or what is left of its TTL."""
    ttl_left = job.submitted_at + job.request.ttl_s - now
    return max(0.0, min(job.request.execution_timeout_s, ttl_left))


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def status_body(job: Job, progress: dict[str, Any] | None = None) -> dict[str, Any]:
    """The /status answer (and the webhook body); `progress` shows as output while running."""
    body: dict[str, Any] = {"id": job.id, "status": job.status.value}
    if job.started_at is not None:
        body["delayTime"] = _ms(job.started_at - job.submitted_at)
        body["workerId"] = job.worker_id
        if job.finished_at is not None:
            body["executionTime"] = _ms(job.finished_at - job.started_at)
    if job.output is not None:
        body["output"] = job.output
    elif job.status is RunPodStatus.IN_PROGRESS and progress is not None:
        body["output"] = progress
    if job.error is not None:
        body["error"] = job.error
    return body
