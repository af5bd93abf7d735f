"""The jobs awaiting RunPod share one endpoint's `/status` budget (RunPod allows 2,000 calls
per 10 s; the client keeps to `status_per_10s`). Each job polls every POLL_MIN_INTERVAL_S while
the budget allows it, and at its share of the budget beyond that (`policy.poll_interval_s`)."""

from collections.abc import Iterator
from contextlib import contextmanager

from orchestrator.policy import poll_interval_s
from orchestrator.runpod import STATUS_BURST_SHARE, STATUS_PER_10S


class PollShare:
    """How many jobs are polling RunPod now, and so how often each may poll."""

    def __init__(self, status_per_10s: int = STATUS_PER_10S) -> None:
        # The limiter's steady rate (runpod.py): what is left after its burst, over 10 s.
        self.per_s = status_per_10s * (1 - STATUS_BURST_SHARE) / 10
        self.awaiting = 0

    @contextmanager
    def awaiting_job(self) -> Iterator[None]:
        """Count one job as polling for the block."""
        self.awaiting += 1
        try:
            yield
        finally:
            self.awaiting -= 1

    def interval_s(self, min_s: float) -> float:
        """Seconds until a job's next poll."""
        return poll_interval_s(min_s, self.awaiting, self.per_s)
