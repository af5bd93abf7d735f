"""The root of the worker's exception tree, and the error every caller of the contract handles:
input that can never succeed. Its message is the job's `error` sentence."""


class HandlerError(Exception):
    """A job failure whose message is one clear sentence fit for the caller."""


class InvalidInput(HandlerError):
    """The job input is wrong; retrying the same input cannot succeed."""
