"""Errors the engine raises to its callers; each message is meant for the end user."""


class EngineError(Exception):
    """Base class of the engine's errors."""


class QueueFullError(EngineError):
    """Admission control refused the request: too much work is already waiting."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTooLargeError(EngineError, ValueError):
    """A single step of the request would not fit the engine's per-forward budget."""


class RequestFailedError(EngineError):
    """The request failed while running (bad input, decode error, non-finite latents, ...)."""


class RequestCancelledError(EngineError):
    """The request was cancelled or timed out before it finished."""


class InvalidRequestError(ValueError):
    """A request's settings or inputs are wrong (the message names the field)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class JobNotFoundError(LookupError):
    """No job has this id (or it expired or was deleted)."""


class JobExpiredError(LookupError):
    """The job's retention has passed: it is being deleted and can no longer be used."""

    def __init__(self, message: str, code: str = "expired"):
        super().__init__(message)
        self.code = code


class StorageError(OSError):
    """The data directory or the job store cannot take a write (a full disk, an I/O error)."""


class StoreUnavailableError(RuntimeError):
    """The job store's database file cannot be opened (damaged, unreadable): the server cannot start."""


class JobConflictError(Exception):
    """The job exists but is not in a state that allows this (e.g. its video is not ready)."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


class EngineDeadError(EngineError):
    """The engine cannot run any more (a rank of its sequence-parallel group died): every
    request it held failed with this message, and new ones are refused until it is restarted."""
