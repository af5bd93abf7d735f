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
    """A credential or billing problem (401, 402): logged loudly; the job waits, unburnt."""


class Permanent(OrchestratorError):
    """Retrying cannot help; the work fails with this message."""


class RunPodJobGone(OrchestratorError):
    """RunPod no longer knows the job (its result expired): it must be submitted again."""


class WorkCancelled(OrchestratorError):
    """The user cancelled the work while its result was being stored."""


class FencedOut(OrchestratorError):
    """Another process holds the job now; this one must stop touching it."""
