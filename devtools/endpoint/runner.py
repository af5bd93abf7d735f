"""What the endpoint runs a job with: any object with a blocking `run`."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


class JobRunner(Protocol):
    """Runs one job to its end, blocking (it is called on a thread of its own)."""

    def run(self, job_id: str, job_input: dict[str, Any]) -> dict[str, Any]:
        """The handler's output dict; `{"error": ...}` makes the job FAILED."""
        ...


@runtime_checkable
class ProgressSource(Protocol):
    """A runner that also knows a running job's latest progress report."""

    def progress(self, job_id: str) -> dict[str, Any] | None:
        """The last report for this job, or None; shown as `output` while IN_PROGRESS."""
        ...


@runtime_checkable
class Stoppable(Protocol):
    """A runner that can stop a running job early (when it is cancelled or times out)."""

    def stop(self, job_id: str) -> None:
        """Ask the job to end now; must not block."""
        ...
