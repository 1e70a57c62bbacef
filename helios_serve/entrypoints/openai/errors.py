"""HTTP errors of the API: one table from the errors below the HTTP layer to a status and an
OpenAI-style code, and the error body every failure is answered with."""

from __future__ import annotations

import logging
import re

from starlette.responses import JSONResponse

from ...errors import (
    EngineDeadError,
    InvalidRequestError,
    JobConflictError,
    JobExpiredError,
    JobNotFoundError,
    QueueFullError,
    StorageError,
)

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error that is already an HTTP answer (auth, readiness, body parsing)."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.headers = status, code, message, param, headers


ERROR_TABLE: dict[type[Exception], tuple[int, str, str | None]] = {
    JobNotFoundError: (404, "not_found", "video_id"),
    JobConflictError: (409, "conflict", "video_id"),
    JobExpiredError: (410, "expired", "video_id"),
    InvalidRequestError: (422, "invalid_value", None),
    QueueFullError: (429, "queue_full", None),
    StorageError: (507, "insufficient_storage", None),
    EngineDeadError: (503, "engine_unavailable", None),
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
    return {"error": {"message": public_message(message), "type": kind, "param": param, "code": code}}


TRACEBACK = "Traceback (most recent call last)"
STACK_FRAME = re.compile(r'^\s*File "[^"]*", line \d+.*$\n?', re.MULTILINE)
SERVER_PATH = re.compile(r"(?<![\w/.:~-])(?!/v1/|/internal/)(?:/[\w.@+~-]+)+")
"""An absolute file path (not an API path, not inside a URL): it would tell a client how the
server's disk is laid out."""


def public_message(message: str) -> str:
    """An error message fit for a client: no stack trace, and each server file path shortened to
    its last name (``.../config.json``). Messages often carry an exception's text, which names
    files (a checkpoint, the data directory) or, wrapped, a whole traceback."""
    message = STACK_FRAME.sub("", message.split(TRACEBACK, 1)[0]).strip()
    return SERVER_PATH.sub(_last_name, message) or "internal error"


def _last_name(path: re.Match) -> str:
    return ".../" + path.group(0).rstrip("/").rsplit("/", 1)[-1]


class InternalErrorsAsJson:
    """ASGI middleware: an exception no handler took becomes an OpenAI-style JSON 500, and the
    connection stays open for the client's next request.

    Starlette's last-resort handler also answers, but then re-raises, and uvicorn closes the
    connection of a request whose app raised: the client's next request on that keep-alive
    connection was reset. Here the exception ends, logged with its trace (never sent)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_tracking_start(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracking_start)
        except Exception:
            logger.exception("unhandled error on %s %r", scope.get("method"), scope.get("path"))
            if started:
                raise  # a response cut short cannot be mended: uvicorn must close the connection
            body = error_body(500, "internal_error", "internal server error")
            await JSONResponse(body, 500)(scope, receive, send)
