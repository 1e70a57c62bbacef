"""Reading POST /v1/videos bodies: JSON or multipart, with a hard size limit."""

from __future__ import annotations

import base64
import binascii
import json
import re

from starlette.datastructures import UploadFile
from starlette.requests import Request

from ...sampling_params import FIELDS
from .errors import ApiError, invalid
from .protocol import VideoCreateRequest

LIST_FIELDS = {name for name, item in FIELDS.items() if item.metadata["kind"] == tuple[int, ...]}
FILE_FIELDS = {"input_reference": "image", "video_reference": "video"}
JSON_FORM_FIELDS = {"extra_params", "prompt_schedule"}
"""Fields a multipart body carries as JSON text: an object (extra_params), a list of objects."""
DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,(?P<data>.*)$", re.DOTALL)


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over ``max_bytes``, by Content-Length or as they stream in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self._message())
            return message

        await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return f"the request body is larger than the limit of {self.max_bytes / 2**20:g} MiB"

    async def _reject(self, send) -> None:
        body = json.dumps({"error": {"message": self._message(), "type": "invalid_request_error", "param": None,
                                     "code": "payload_too_large"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


MAX_JSON_DEPTH = 64
"""Deeper JSON is refused: no request needs it, and Python's parser recurses on nesting."""


def parse_json(text: str | bytes, what: str = "the body", param: str | None = None):
    """JSON from a client, no deeper than MAX_JSON_DEPTH; ApiError (400 too deep, 422 not JSON)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise too_deep(what, param) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"{what} is not valid JSON: {exc}", param) from None
    if nested_deeper_than(value, MAX_JSON_DEPTH):
        raise too_deep(what, param)
    return value


def too_deep(what: str, param: str | None) -> ApiError:
    return ApiError(400, "nesting_too_deep", f"{what} is nested more than {MAX_JSON_DEPTH} levels deep", param)


def nested_deeper_than(value, limit: int) -> bool:
    """Whether lists and objects nest more than ``limit`` levels (walked without recursion)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def _form_value(name: str, values: list[str]):
    """Multipart fields arrive as strings; lists come repeated (key[]), as JSON or comma-separated."""
    if name in LIST_FIELDS:
        if len(values) == 1:
            text = values[0].strip()
            if text.startswith("["):
                return parse_json(text, name, name)
            return [part.strip() for part in text.split(",") if part.strip()]
        return values
    if name in JSON_FORM_FIELDS:
        return parse_json(values[0], name, name)
    return values[-1]


def media_type(content_type: str) -> str:
    """``multipart/form-data; boundary=x`` -> ``multipart/form-data``."""
    return content_type.split(";", 1)[0].strip().lower()


async def parse_create_request(request: Request) -> tuple[VideoCreateRequest, dict[str, bytes]]:
    """(validated request, uploaded files by kind). Raises ValidationError or ApiError (4xx).

    The body is JSON or multipart (web_safety.py refuses other types before a route runs)."""
    if media_type(request.headers.get("content-type", "")) == "multipart/form-data":
        data, uploads = await _read_form(request)
    else:
        data = parse_json(await request.body() or b"null")
        if not isinstance(data, dict):
            raise invalid("the body must be a JSON object")
        uploads = {}
        for name, kind in FILE_FIELDS.items():
            if isinstance(data.get(name), str):
                try:
                    uploads[kind] = decode_base64(data[name], name)
                except ValueError as exc:
                    raise invalid(str(exc), name) from None
    body = VideoCreateRequest.model_validate(data)
    return body, uploads


async def _read_form(request: Request) -> tuple[dict, dict[str, bytes]]:
    """(the fields as the JSON body would give them, uploaded files by kind) of a multipart body.

    An image or video comes as a file upload or, as in a JSON body, as base64 text."""
    form = await request.form(max_files=4, max_fields=200)
    fields: dict[str, list[str]] = {}
    files: dict[str, list[UploadFile]] = {}
    for raw_name, value in form.multi_items():
        name = raw_name.removesuffix("[]")
        if isinstance(value, UploadFile):
            if name not in FILE_FIELDS:
                raise invalid(f"{name}: unexpected file upload", name)
            files.setdefault(name, []).append(value)
        else:
            fields.setdefault(name, []).append(value)
    uploads: dict[str, bytes] = {}
    for name, kind in FILE_FIELDS.items():
        given = files.get(name, []) + fields.get(name, [])
        if len(given) > 1:  # which one was meant is a guess: refused rather than one silently dropped
            raise invalid(f"{name}: give one file upload or one base64 data URL, not {len(given)}", name)
        if given:
            uploads[kind] = await _form_upload(name, given[0])
    # Text inputs stay among the fields, as in a JSON body: the request's checks see them.
    return {name: _form_value(name, values) for name, values in fields.items()}, uploads


async def _form_upload(name: str, value: UploadFile | str) -> bytes:
    """The bytes of a multipart image or video: a file upload, or text that is a base64 data URL."""
    if isinstance(value, UploadFile):
        return await value.read()
    try:
        return decode_base64(value, name)
    except ValueError:
        raise invalid(f"{name} must be a file upload or a base64 data URL (no web URLs: this server does not "
                      "fetch)", name) from None


def decode_base64(value: str, field: str) -> bytes:
    """A data URL (data:image/png;base64,...) or bare base64 -> bytes; ValueError names the field."""
    match = DATA_URL.match(value)
    payload = match.group("data") if match else value
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{field} must be a base64 data URL (no web URLs: this server does not fetch)") from None
