"""The OpenAPI schema, made truthful: every operation lists the error statuses it can answer,
with the one error body they all share, and the bearer scheme of the routes that need a key.

FastAPI's generated schema knows only the success response and its own 422. The statuses below
follow from where each error is raised: the web-safety middleware (400 Host or body nesting,
403 Origin, 415 body type) and the body-size limit (413) guard every route or every POST; the
key check (401) and readiness (503) every /v1 route; the job routes 404 and 409; the creates
422, 429 and 507; a prompt change 507 too (it records the new schedule).
`tests/test_openapi.py` holds the server to it with schemathesis.

It also serves the schema's two readers, Swagger UI at /docs and ReDoc at /redoc, from copies
of their scripts under static/ (npm's swagger-ui-dist and redoc, static/README.md): FastAPI's
own pages load them from a CDN, so they are blank on a machine without internet.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from ...sampling_params import EXAMPLE_PROMPT
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
BODY_EXAMPLES = {
    "VideoCreateRequest": {"prompt": EXAMPLE_PROMPT, "seconds": 4, "size": "640x384", "seed": 42},
    "VideoPromptRequest": {"prompt": "The fox leaps into a snowdrift", "transition_chunks": 1},
    "VideoExtendRequest": {"prompt": "A storm rolls in over the snowy field", "num_frames": 66},
}
"""One valid JSON body per request schema: the reference shows it and Swagger UI's "Try it out"
starts from it (an example built from every field's own would combine fields that exclude each
other, seconds and num_frames)."""
FORM_FILES = {
    "input_reference": "image to start from (image-to-video): an image file (or a base64 data URL as text); not "
                       "with video_reference",
    "video_reference": "video to continue (video-to-video): a video file of at least 33 frames (or a base64 data "
                       "URL as text)",
}
"""The create fields that a multipart body sends as file uploads (body.py's FILE_FIELDS); body.py
also reads them from text, as a JSON body gives them."""
STATIC_DIR = Path(__file__).with_name("static")
STATIC_PATH = "/static"
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}
"""No validator badge: Swagger UI would fetch it from validator.swagger.io."""
DOCS_POLICY = ("default-src 'self'; script-src 'self'{inline_scripts}; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data: blob:; media-src 'self' blob:; worker-src 'self' blob:; connect-src 'self'; "
               "object-src 'none'; base-uri 'self'")
"""The docs pages' Content-Security-Policy: everything from this server. Styles inline (both
set style attributes), images, videos and workers also from data: and blob: URLs (Swagger UI
shows responses through them; ReDoc's search runs in a blob: worker); inline scripts only by
hash. It keeps out what the bundles would fetch from elsewhere: ReDoc's sidebar shows Redocly's
logo from their CDN, which offline fails (the image hides itself) and online tells them."""
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


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


def create_form_schema(create: dict) -> dict:
    """The multipart body of a create, from the JSON body's schema: the same fields as form fields
    (lists repeated or comma-separated, extra_params and prompt_schedule as JSON text, OpenAPI's
    default encoding of an object or array part), the image and video as files."""
    form = copy.deepcopy(create)
    form["title"] = "VideoCreateForm"
    form["description"] = ("POST /v1/videos as multipart/form-data: the fields of the JSON body (extra_params and "
                           "prompt_schedule as JSON text), the image or video to start from as a file upload.")
    for name, description in FORM_FILES.items():
        form["properties"][name] = {"type": "string", "format": "binary", "description": description}
    return form


def add_body_examples(operation: dict) -> None:
    """The example of BODY_EXAMPLES for each JSON request body of ``operation``."""
    json_body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if json_body is not None:
        model = json_body["schema"]["$ref"].rsplit("/", 1)[-1]
        json_body["example"] = BODY_EXAMPLES[model]


def document(schema: dict) -> dict:
    """Add the error responses, the shared error body, the bearer scheme and the request bodies'
    examples to a FastAPI schema."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for body in (VideoCreateRequest, VideoPromptRequest, VideoExtendRequest):
        body_schema = body.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(body_schema.pop("$defs", {}))  # nested models (PromptScheduleEntry): where the refs point
        schemas[body.__name__] = body_schema
    schemas["VideoCreateForm"] = create_form_schema(schemas["VideoCreateRequest"])
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
            add_body_examples(operation)
    return schema


def install(app: FastAPI) -> None:
    """The documented schema at /openapi.json, and the pages that read it (``install_docs``)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = document(schema)
        return app.openapi_schema

    app.openapi = openapi
    install_docs(app)


def install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc (ReDoc), with every script, style sheet and icon served from
    STATIC_PATH. URLs carry the ASGI root path, so the pages work behind a proxy that mounts the
    server under a prefix (as FastAPI's own pages do)."""
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        static = root_path(request) + STATIC_PATH
        return same_origin_only(get_swagger_ui_html(
            openapi_url=root_path(request) + app.openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{static}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{static}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{static}/swagger-ui/favicon-32x32.png",
            oauth2_redirect_url=None, swagger_ui_parameters=SWAGGER_UI_PARAMETERS))

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        static = root_path(request) + STATIC_PATH
        return same_origin_only(get_redoc_html(
            openapi_url=root_path(request) + app.openapi_url, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{static}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{static}/swagger-ui/favicon-32x32.png", with_google_fonts=False))


def root_path(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


def same_origin_only(page: HTMLResponse) -> HTMLResponse:
    """``page`` with DOCS_POLICY, allowing its inline scripts (Swagger UI's start) by their hashes."""
    hashes = "".join(f" 'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
                     for script in INLINE_SCRIPT.findall(page.body.decode()))
    page.headers["Content-Security-Policy"] = DOCS_POLICY.format(inline_scripts=hashes)
    return page
