"""Waiting and retrying as arithmetic: poll intervals, backoff, and title cleaning. Pure."""

import random
import re
import time
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.jobs import ClaimedJob
    from orchestrator.settings import Settings

FALLBACK_TITLE = "I2I 작품"
TITLE_MAX_CHARS = 10
HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7a3]")
QUOTES = "\"'`“”‘’「」『』《》〈〉«»"
TRAILING = ".,!?;:。、！？…~·- "


def poll_interval_s(min_s: float, awaiting: int, status_per_s: float) -> float:
    """Next /status poll of one job: every `min_s`, unless the jobs awaiting RunPod together
    would spend more than the endpoint's /status budget; then each polls at its share of it.
    Polls never queue behind the rate limiter, and detection is the best the budget allows."""
    return max(min_s, awaiting / status_per_s)


def window_bucket(per_window: float, window_s: float, burst_share: float) -> tuple[float, float]:
    """A token bucket (capacity, seconds to refill it) that lets at most `per_window` calls
    through in any `window_s`: a full bucket's burst plus what refills during the window.
    `burst_share` of the budget may go at once; the rest is spread over the window."""
    capacity = per_window * burst_share
    per_s = (per_window - capacity) / window_s
    return capacity, capacity / per_s


def progress_due(
    new: object, recorded: object, since_recorded_s: float, min_interval_s: float
) -> bool:
    """Whether to write a job's progress now: only news (something, and not what is already
    recorded), and at most once per `min_interval_s`."""
    if new is None or new == recorded:
        return False
    return since_recorded_s >= min_interval_s


def backoff_s(
    attempt: int,
    base_s: float = 1.0,
    cap_s: float = 60.0,
    retry_after_s: float | None = None,
    jitter: float = 0.1,
) -> float:
    """Delay before retry number `attempt` (1-based): exponential, capped, honouring Retry-After."""
    delay = min(cap_s, base_s * 2.0 ** max(0, attempt - 1))
    if retry_after_s is not None:
        delay = max(delay, min(cap_s, retry_after_s))
    spread: float = random.uniform(0, jitter)  # noqa: S311 - jitter, not security
    return delay * (1 + spread)


def has_hangul(text: str) -> bool:
    """True if the text has any Korean letters (then it is translated)."""
    return bool(HANGUL.search(text))


def clean_title(answer: str | None) -> str:
    """First line of the model's answer, unquoted, without trailing punctuation, 10 characters."""
    lines = [line.strip() for line in (answer or "").splitlines() if line.strip()]
    title = lines[0] if lines else ""
    title = re.sub(r"^(제목|title)\s*[:：]\s*", "", title, flags=re.IGNORECASE)
    title = title.strip(QUOTES + " ").rstrip(TRAILING).strip(QUOTES + " ")
    title = title[:TITLE_MAX_CHARS].strip()
    return title or FALLBACK_TITLE


# The worker's sentences for a sick worker (handler/comfy.py: ComfyUI unreachable, or answering
# with an HTTP error or garbage). The worker also asks RunPod to replace itself (refresh_worker),
# so the job deserves another worker rather than a failure.
WORKER_FAULT_PREFIX = "ComfyUI "


def is_worker_fault(status: str, error: str | None) -> bool:
    """True for a RunPod job that failed because its worker was sick, not because of the job."""
    return status == "FAILED" and (error or "").startswith(WORKER_FAULT_PREFIX)


def internal_error(exc: BaseException) -> str:
    """The sentence a user sees for an exception nobody planned for (the traceback is logged)."""
    return f"internal error ({type(exc).__name__})"


class CallbackAction(Enum):
    """What a RunPod completion webhook asks of the job its token names."""

    WAKE = "wake"  # the recorded submission finished: poll it now
    ADOPT = "adopt"  # a submission whose id was lost, and the job still waits: it is the result
    CANCEL = "cancel"  # a stray submission (the job has another, or is over): stop it


def callback_action(
    recorded_id: str | None, job_status: str, runpod_id: str | None
) -> CallbackAction:
    """Decide from the job's row and the webhook body's RunPod id."""
    if runpod_id is None or runpod_id == recorded_id:
        return CallbackAction.WAKE
    if recorded_id is None and job_status in ("pending", "taken"):
        return CallbackAction.ADOPT
    return CallbackAction.CANCEL


def unrecorded_submission_wait_s(
    job: "ClaimedJob", settings: "Settings", now_s: float | None = None
) -> float:
    """How long to hold back a new `/run` for a job whose last one may have reached RunPod
    unrecorded: only with completion webhooks (they adopt that job), up to
    SUBMISSION_UNKNOWN_WAIT_S after it was sent; 0 means submit now."""
    if job.runpod_job_id is not None or job.submit_started_at is None:
        return 0.0
    if not settings.public_base_url:
        return 0.0
    until_s = job.submit_started_at.timestamp() + settings.submission_unknown_wait_s
    return max(0.0, until_s - (time.time() if now_s is None else now_s))
