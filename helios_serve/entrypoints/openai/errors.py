"""HTTP errors of the API: one table from the errors below the HTTP layer to a status and an
OpenAI-style code, and the error body every failure is answered with."""

from __future__ import annotations

from ...errors import InvalidRequestError, JobConflictError, JobNotFoundError, QueueFullError


class ApiError(Exception):
    """An error that is already an HTTP answer (auth, readiness, body parsing)."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.headers = status, code, message, param, headers


ERROR_TABLE: dict[type[Exception], tuple[int, str, str | None]] = {
    JobNotFoundError: (404, "not_found", "video_id"),
    JobConflictError: (409, "conflict", "video_id"),
    InvalidRequestError: (422, "invalid_value", None),
    QueueFullError: (429, "queue_full", None),
}
"""Exception type -> (status, code, param); an exception's own ``code``/``param`` win."""


def api_error(exc: Exception) -> ApiError:
    """The HTTP answer to an error of the layers below (one of ERROR_TABLE's types)."""
    if isinstance(exc, ApiError):
        return exc
    status, code, param = next(entry for kind, entry in ERROR_TABLE.items() if isinstance(exc, kind))
    headers = None
    if isinstance(exc, QueueFullError):
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
    return ApiError(status, getattr(exc, "code", code), str(exc), getattr(exc, "param", None) or param, headers)


def invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(422, "invalid_value", message, param)


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
