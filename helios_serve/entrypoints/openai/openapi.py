"""The OpenAPI schema, made truthful: every operation lists the error statuses it can answer,
with the one error body they all share, and the bearer scheme of the routes that need a key.

FastAPI's generated schema knows only the success response and its own 422. The statuses below
follow from where each error is raised: the web-safety middleware (400 Host or body nesting,
403 Origin, 415 body type) and the body-size limit (413) guard every route or every POST; the
key check (401) and readiness (503) every /v1 route; the job routes 404 and 409; the creates
422, 429 and 507; a prompt change 507 too (it records the new schedule).
`tests/test_openapi.py` holds the server to it with schemathesis.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from .protocol import VideoCreateRequest, VideoExtendRequest, VideoPromptRequest

ERROR_DESCRIPTIONS = {
    400: "the Host header does not name this server, or the body is nested too deeply",
    401: "a valid API key is required (Authorization: Bearer KEY)",
    403: "a browser page of another site",
    404: "no such video",
    409: "the video is not in a state that allows this (e.g. not finished yet)",
    410: "the video has expired (its retention passed)",
    413: "the body is larger than --max-upload-mb",
    415: "the body is neither application/json nor multipart/form-data",
    422: "a field has an invalid value (param names it)",
    429: "the queue is full; retry after Retry-After seconds",
    500: "an internal error",
    503: "the model is still loading, or failed to load",
    507: "the server cannot store a new video now (low disk space, a failing store)",
}
CREATE_PATHS = {"/v1/videos", "/v1/videos/sync"}
PROMPT_PATH = "/v1/videos/{video_id}/prompt"
EXTEND_PATH = "/v1/videos/{video_id}/extend"
MEDIA_TYPES = {
    "/v1/videos/sync": ("video/mp4",),
    "/v1/videos/{video_id}/content": ("video/mp4", "image/webp"),
    "/v1/videos/{video_id}/events": ("text/event-stream",),
    "/v1/videos/{video_id}/stream.m3u8": ("application/vnd.apple.mpegurl",),
    "/v1/videos/{video_id}/stream/{name}": ("video/mp4", "video/iso.segment"),
}
"""What the routes that do not answer JSON answer with (a 200)."""
PUBLIC_PATHS = {"/health", "/ready", "/metrics"}
"""No key, no readiness: probes and scrapers."""


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str


class ErrorResponse(BaseModel):
    """The body of every error answer (OpenAI's format)."""

    error: ErrorDetail


class ServiceStatus(BaseModel):
    """/health and /ready: ``status`` (ok, degraded, ready, loading, failed) and why."""

    status: str
    detail: str | None = None
    storage: str | None = None


def error_statuses(path: str, method: str) -> set[int]:
    """The error statuses an operation can answer."""
    statuses = {400, 500}
    if path not in PUBLIC_PATHS:
        statuses |= {401, 503}
    if method in ("post", "delete"):
        statuses.add(403)
    if method == "post":
        statuses |= {413, 415, 422}
    if path in CREATE_PATHS and method == "post":
        statuses |= {404, 429, 507}  # 404: a model this server does not serve
    if "{video_id}" in path:
        statuses |= {404, 409, 422}
    if path == EXTEND_PATH:
        statuses |= {410, 429, 507}  # 410: the original expired; 429, 507: a create
    if path == PROMPT_PATH:
        statuses.add(507)  # the new schedule is recorded with the job
    if path == "/v1/videos" and method == "get":
        statuses.add(422)  # limit, order
    return statuses


def document(schema: dict) -> dict:
    """Add the error responses, the shared error body and the bearer scheme to a FastAPI schema."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for body in (VideoCreateRequest, VideoPromptRequest, VideoExtendRequest):
        body_schema = body.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(body_schema.pop("$defs", {}))  # nested models (PromptScheduleEntry): where the refs point
        schemas[body.__name__] = body_schema
    for model in (ErrorDetail, ErrorResponse, ServiceStatus):
        schemas[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body; ours is ErrorResponse
        schemas.pop(unused, None)
    components["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    status = {"application/json": {"schema": {"$ref": "#/components/schemas/ServiceStatus"}}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for code in sorted(error_statuses(path, method)):
                responses[str(code)] = {"description": ERROR_DESCRIPTIONS[code], "content": error}
            if path in MEDIA_TYPES:
                binary = {"schema": {"type": "string", "format": "binary"}}
                responses["200"]["content"] = {media_type: binary for media_type in MEDIA_TYPES[path]}
            if path in ("/health", "/ready"):
                responses["200"] = {"description": "serving", "content": status}
                responses["503"] = {"description": "cannot serve", "content": status}
            if path not in PUBLIC_PATHS:
                operation["security"] = [{"bearerAuth": []}, {}]  # a key only when the server has one
    return schema


def install(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = document(schema)
        return app.openapi_schema

    app.openapi = openapi
