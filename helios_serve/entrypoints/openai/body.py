"""Reading POST /v1/videos bodies: JSON or multipart, with a hard size limit."""

from __future__ import annotations

import base64
import binascii
import json
import re

from starlette.datastructures import UploadFile
from starlette.requests import Request

from ...sampling_params import FIELDS
from .errors import invalid
from .protocol import VideoCreateRequest

LIST_FIELDS = {name for name, item in FIELDS.items() if item.metadata["kind"] == tuple[int, ...]}
FILE_FIELDS = {"input_reference": "image", "video_reference": "video"}
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


def _form_value(name: str, values: list[str]):
    """Multipart fields arrive as strings; lists come repeated (key[]), as JSON or comma-separated."""
    if name in LIST_FIELDS:
        if len(values) == 1:
            text = values[0].strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return values
    if name == "extra_params":
        return json.loads(values[0])
    return values[-1]


async def parse_create_request(request: Request) -> tuple[VideoCreateRequest, dict[str, bytes]]:
    """(validated request, uploaded files by kind). Raises ValidationError or ApiError (422)."""
    content_type = request.headers.get("content-type", "")
    uploads: dict[str, bytes] = {}
    if content_type.startswith("multipart/form-data") or content_type.startswith("application/x-www-form-urlencoded"):
        form = await request.form(max_files=4, max_fields=200)
        fields: dict[str, list[str]] = {}
        for raw_name, value in form.multi_items():
            name = raw_name.removesuffix("[]")
            if isinstance(value, UploadFile):
                if name not in FILE_FIELDS:
                    raise invalid(f"{name}: unexpected file upload", name)
                uploads[FILE_FIELDS[name]] = await value.read()
                continue
            fields.setdefault(name, []).append(value)
        try:
            data = {name: _form_value(name, values) for name, values in fields.items()}
        except json.JSONDecodeError as exc:
            raise invalid(f"a form field is not valid JSON: {exc}") from None
    else:
        try:
            data = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise invalid(f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise invalid("the body must be a JSON object")
        for name, kind in FILE_FIELDS.items():
            if isinstance(data.get(name), str):
                try:
                    uploads[kind] = decode_base64(data[name], name)
                except ValueError as exc:
                    raise invalid(str(exc), name) from None
    body = VideoCreateRequest.model_validate(data)
    return body, uploads


def decode_base64(value: str, field: str) -> bytes:
    """A data URL (data:image/png;base64,...) or bare base64 -> bytes; ValueError names the field."""
    match = DATA_URL.match(value)
    payload = match.group("data") if match else value
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{field} must be a base64 data URL (no web URLs: this server does not fetch)") from None
