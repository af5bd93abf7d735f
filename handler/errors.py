"""One exception tree for the worker: each error's text is the job's `error` field. Its root and
InvalidInput live in the contract (handler.contract.errors), which the orchestrator shares."""

from handler.contract.errors import HandlerError, InvalidInput

__all__ = [
    "ComfyRejected",
    "ComfyUnavailable",
    "HandlerError",
    "ImageFetchError",
    "InvalidInput",
    "InvalidOutput",
    "JobStopped",
    "JobTimedOut",
]


class ImageFetchError(HandlerError):
    """The reference image could not be fetched from its URL."""


class ComfyUnavailable(HandlerError):
    """ComfyUI does not answer: the worker itself is unhealthy and should be replaced."""


class ComfyRejected(HandlerError):
    """ComfyUI refused the graph (`POST /prompt` 400) or failed while executing it."""


class JobTimedOut(HandlerError):
    """The job passed its deadline; the prompt was interrupted."""


class JobStopped(HandlerError):
    """The job was stopped from outside (cancelled on the endpoint); the prompt was interrupted."""


class InvalidOutput(HandlerError):
    """ComfyUI finished but produced no usable image."""
