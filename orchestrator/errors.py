"""One exception tree for the orchestrator, telling the caller what to do next."""


class OrchestratorError(Exception):
    """Base of every error the flow handles."""


class ConfigError(Exception):
    """A setting that is missing or wrong; the message says which and how to fix it."""


class Transient(OrchestratorError):
    """Worth retrying later: rate limits, 5xx, timeouts, a remote service down."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NeedsOperator(Transient):
    """A credential, billing or configuration problem (401, 402, 403, an endpoint that does not
    exist): logged loudly, shown by /readyz; the job waits for the fix without spending retries."""

    def __init__(self, message: str, service: str) -> None:
        super().__init__(message)
        self.service = service


class SubmissionUnknown(Transient):
    """`/run` was sent but its answer was lost (a read timeout, a dropped connection): RunPod may
    have accepted the job, so submitting again at once could pay for a second GPU run."""


class Permanent(OrchestratorError):
    """Retrying cannot help; the work fails with this message."""


class RunPodJobGone(OrchestratorError):
    """RunPod no longer knows the job (its result expired): it must be submitted again."""


class WorkCancelled(OrchestratorError):
    """The user cancelled the work while its result was being stored."""


class FencedOut(OrchestratorError):
    """Another process holds the job now; this one must stop touching it."""
