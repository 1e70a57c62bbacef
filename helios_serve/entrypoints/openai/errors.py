"""HTTP errors of the API: a status, an OpenAI-style code and a message for the client."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.headers = status, code, message, param, headers


def invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(422, "invalid_value", message, param)
