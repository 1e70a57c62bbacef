"""The FastAPI app: OpenAI-style /v1/videos, streaming, models, health, readiness and metrics.

Routes only translate HTTP to the VideoService and back; errors become OpenAI-style error
bodies ({"error": {"message", "type", "param", "code"}}), never stack traces.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...config import EngineConfig
from .body import BodyTooLarge, BodySizeLimit, parse_create_request
from .metrics import ServerMetrics
from .protocol import ModelCard, ModelList, VideoDeleted, VideoList, VideoObject
from .replica import requested_job_id
from .errors import ApiError
from .serving_video import VideoService

logger = logging.getLogger(__name__)
POLL_AFTER_MS = "500"


@dataclass
class ServerConfig:
    model: str = "helios-tiny"
    data_dir: str = "./helios-data"
    api_key: str | None = None
    retention_hours: float = 24.0
    max_upload_mb: float = 64.0
    device: str | None = None
    dtype: str | None = None
    kernels: str | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    instance_id: str | None = None
    """Set when this server is one engine replica of a Ray deployment: it owns the jobs it
    creates, resumes nothing on start (the router hands a dead replica's jobs to the living),
    and answers the router on /internal/status and /internal/adopt."""


class ServerState:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.metrics = ServerMetrics()
        self.engine = None
        self.service: VideoService | None = None
        self.load_error: str | None = None
        self.started = time.time()
        self.warmup_seconds: float | None = None
        """How long the start-up warm-up (one chunk at the serving geometry) took."""

    @property
    def ready(self) -> bool:
        return self.service is not None

    def require_service(self) -> VideoService:
        if self.service is None:
            detail = self.load_error or "the model is still loading; retry shortly"
            raise ApiError(503, "not_ready", detail, headers={"Retry-After": "5"})
        return self.service


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def build_app(config: ServerConfig) -> FastAPI:
    state = ServerState(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from .lifecycle import load_engine, periodic_cleanup

        loading = asyncio.create_task(load_engine(state))
        cleanup = asyncio.create_task(periodic_cleanup(state))
        yield
        for task in (loading, cleanup):
            task.cancel()
        if state.engine is not None:
            state.engine.shutdown()

    app = FastAPI(title="helios-serve", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-style video generation API for the Helios models.")
    app.state.server = state
    app.add_middleware(BodySizeLimit, max_bytes=int(config.max_upload_mb * 2**20))
    install_error_handlers(app)

    def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        supplied = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("api_key")
        if supplied != config.api_key:
            raise ApiError(401, "invalid_api_key", "a valid API key is required (Authorization: Bearer KEY)",
                           headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorize)]

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if state.ready:
            return {"status": "ready", "model": config.model, "warmup_seconds": round(state.warmup_seconds, 3)}
        status = "failed" if state.load_error else "loading"
        return JSONResponse({"status": status, "detail": state.load_error}, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        waiting, running = state.engine.queue_depth() if state.engine is not None else (0, 0)
        return Response(state.metrics.exposition(waiting, running), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", dependencies=auth, response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=config.model, created=int(state.started))])

    @app.post("/v1/videos", dependencies=auth, response_model=VideoObject, openapi_extra=CREATE_BODY_SCHEMA)
    async def create_video(request: Request) -> JSONResponse:
        service = state.require_service()
        body, uploads = await parse_create_request(request)
        record = await service.create(body, uploads, requested_job_id(request, state))
        return JSONResponse(service.view(record).model_dump(), headers={"openai-poll-after-ms": POLL_AFTER_MS})

    @app.post("/v1/videos/sync", dependencies=auth, response_class=FileResponse, openapi_extra=CREATE_BODY_SCHEMA)
    async def create_video_sync(request: Request):
        service = state.require_service()
        body, uploads = await parse_create_request(request)
        record = await service.create(body, uploads, requested_job_id(request, state))
        events = service.subscribe(record.id)
        try:
            while service.get(record.id).status not in ("completed", "failed"):
                try:
                    await asyncio.wait_for(events.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    continue
        finally:
            service.unsubscribe(record.id, events)
        final = service.get(record.id)
        if final.status == "failed":
            raise ApiError(500, final.error_code or "generation_failed", final.error_message or "generation failed")
        return FileResponse(service.files.video(record.id), media_type="video/mp4", filename=f"{record.id}.mp4")

    @app.get("/v1/videos", dependencies=auth, response_model=VideoList)
    async def list_videos(
        after: str | None = Query(default=None, max_length=64),
        limit: int = Query(default=20, ge=1, le=100),
        order: str = Query(default="desc", pattern="^(asc|desc)$"),
    ) -> VideoList:
        service = state.require_service()
        records, has_more = service.store.page(after, limit, order)
        data = [service.view(r) for r in records]
        return VideoList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                         has_more=has_more)

    @app.get("/v1/videos/{video_id}", dependencies=auth, response_model=VideoObject)
    async def retrieve_video(video_id: str) -> JSONResponse:
        service = state.require_service()
        view = service.view(service.get(video_id))
        return JSONResponse(view.model_dump(), headers={"openai-poll-after-ms": POLL_AFTER_MS})

    @app.delete("/v1/videos/{video_id}", dependencies=auth, response_model=VideoDeleted)
    async def delete_video(video_id: str) -> VideoDeleted:
        service = state.require_service()
        await service.delete(video_id)  # a running job is counted as cancelled by its task
        return VideoDeleted(id=video_id)

    @app.get("/v1/videos/{video_id}/content", dependencies=auth, response_class=FileResponse)
    async def video_content(video_id: str, variant: str = Query(default="video", pattern="^(video|thumbnail)$")):
        service = state.require_service()
        record = service.get(video_id)
        if variant == "thumbnail" and service.files.thumbnail(video_id).exists():
            return FileResponse(service.files.thumbnail(video_id), media_type="image/webp")
        if record.status != "completed":
            raise ApiError(409, "video_not_ready", f"video {video_id} is {record.status}; its content is not ready",
                           "video_id")
        return FileResponse(service.files.video(video_id), media_type="video/mp4", filename=f"{video_id}.mp4")

    from .playground import install_playground
    from .realtime import install_realtime
    from .streaming import install_streaming

    install_streaming(app, state, auth)
    install_realtime(app, state)
    install_playground(app)
    if config.instance_id is not None:
        from .replica import install_replica_routes

        install_replica_routes(app, state, auth)
    install_openapi_schema(app)
    return app


def install_openapi_schema(app: FastAPI) -> None:
    """The create routes read JSON or multipart themselves; publish their body model in the schema."""
    from fastapi.openapi.utils import get_openapi

    from .protocol import VideoCreateRequest

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            body = VideoCreateRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {})["VideoCreateRequest"] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


CREATE_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/VideoCreateRequest"}},
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/VideoCreateRequest"}},
        },
    }
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.status, exc.code, exc.message, exc.param), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    @app.exception_handler(ValidationError)
    async def invalid(request: Request, exc) -> JSONResponse:
        first = exc.errors()[0]
        location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
        param = ".".join(location) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return JSONResponse(error_body(422, "invalid_value", message, param), 422)

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse(error_body(413, "payload_too_large", str(exc)), 413)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc.status_code, "http_error", str(exc.detail)), exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, "internal_error", "internal server error"), 500)

