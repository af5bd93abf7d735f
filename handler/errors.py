"""One exception tree for the worker: each error's text is the job's `error` field."""


class HandlerError(Exception):
    """A job failure whose message is one clear sentence fit for the caller."""


class InvalidInput(HandlerError):
    """The job input is wrong; retrying the same input cannot succeed."""


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
