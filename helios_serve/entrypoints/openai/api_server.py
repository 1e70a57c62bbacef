"""The FastAPI app, assembled here and only here: OpenAI-style /v1/videos, streaming, models,
health, readiness and metrics.

Routes only translate HTTP to the JobManager (jobs/manager.py) and back; errors of the layers
below go through one table (errors.py) to OpenAI-style error bodies
({"error": {"message", "type", "param", "code"}}), never stack traces or server paths. Every
request first passes web_safety.py's Host, Origin and Content-Type checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection
from starlette.routing import Match

from ...config import HeliosConfig
from ...errors import JobConflictError, JobNotFoundError
from ...jobs.manager import JobManager
from ...jobs.status import JobStatus
from ...jobs.store import JobRecord
from .body import BodyTooLarge, BodySizeLimit, parse_create_request, parse_json
from .errors import ERROR_TABLE, ApiError, InternalErrorsAsJson, api_error, error_body, public_message
from . import openapi
from .metrics import HttpMetrics, ServerMetrics
from .protocol import (
    ModelCard,
    ModelList,
    VideoCreateRequest,
    VideoDeleted,
    VideoExtendRequest,
    VideoList,
    VideoObject,
    VideoPromptChanged,
    VideoPromptRequest,
    video_object,
)
from .replica import requested_job_id
from .web_safety import HostPolicy, OriginPolicy, WebSafety

logger = logging.getLogger(__name__)
POLL_AFTER_MS = "500"


class ServerState:
    """What the routes share: the config, the engine and jobs once loaded, the metrics."""

    def __init__(self, config: HeliosConfig, replica_id: str | None):
        self.config = config
        self.replica_id = replica_id
        """Set when this server is one engine replica of a Ray deployment: it owns the jobs it
        creates, resumes nothing on start (the router hands a dead replica's jobs to the living),
        and answers the router on /internal/status and /internal/adopt."""
        self.metrics = ServerMetrics(config.served_model_names[0])  # the model_name label, as videos report
        self.engine = None
        self.jobs: JobManager | None = None
        self._load_error: str | None = None
        self.stop_serving = None
        """Set by `serve`: called when the model fails to load, so the process exits non-zero
        naming the cause instead of staying up unready (a replica of Ray Serve stays up)."""
        self.started = time.time()
        self.warmup_seconds: float | None = None
        """How long the start-up warm-up (one chunk at the serving geometry) took."""

    @property
    def ready(self) -> bool:
        return self.jobs is not None

    @property
    def load_error(self) -> str | None:
        """Why the model or the jobs failed to load, as clients see it (/ready, /health, 503s):
        without the server's paths, which the log keeps."""
        return self._load_error

    @load_error.setter
    def load_error(self, message: str | None) -> None:
        self._load_error = public_message(message) if message is not None else None

    def require_jobs(self) -> JobManager:
        if self.jobs is None:
            detail = self.load_error or "the model is still loading; retry shortly"
            raise ApiError(503, "not_ready", detail, headers={"Retry-After": "5"})
        return self.jobs

    async def create_job(self, body: VideoCreateRequest, uploads: dict[str, bytes], job_id: str | None = None
                         ) -> JobRecord:
        """A job from a validated body (HTTP or WebSocket)."""
        jobs = self.require_jobs()
        names = self.config.served_model_names
        if body.model is not None and body.model not in names:
            raise ApiError(404, "model_not_found", f"this server serves {', '.join(map(repr, names))}, not "
                                                   f"{body.model!r}", "model")
        return await jobs.create(body.prompt, body.sampling_params(), uploads, priority=body.priority,
                                 realtime=body.realtime, job_id=job_id, live=body.live, keep=body.keep,
                                 pacing=body.pacing_fields())

    def authorize(self, connection: HTTPConnection) -> None:
        """The one API-key check, for HTTP routes (a dependency) and the WebSocket alike."""
        expected = self.config.server.api_key
        if expected is None:
            return
        header = connection.headers.get("authorization", "")
        supplied = header[7:] if header.lower().startswith("bearer ") else connection.query_params.get("api_key")
        if not hmac.compare_digest((supplied or "").encode(), expected.encode()):
            raise ApiError(401, "invalid_api_key", "a valid API key is required (Authorization: Bearer KEY)",
                           headers={"WWW-Authenticate": "Bearer"})


def build_app(config: HeliosConfig, replica_id: str | None = None) -> FastAPI:
    state = ServerState(config, replica_id)

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
                  description="OpenAI-style video generation API for the Helios models.",
                  docs_url=None, redoc_url=None)  # openapi.py serves them without a CDN
    app.state.server = state
    install_middleware(app, config, behind_ingress=replica_id is not None)
    app.add_middleware(HttpMetrics, metrics=state.metrics)  # outermost: it counts the other layers' refusals too
    install_error_handlers(app)
    auth = [Depends(state.authorize)]

    @app.get("/health")
    async def health():
        """503 when the service cannot serve (its model or job store failed to load, or the engine
        died: a rank of its sequence-parallel group exited); 200 with
        status "degraded" when it serves but cannot store new videos (low disk, a failing store)."""
        failure = state.load_error or (state.engine.dead if state.engine is not None else None)
        if failure:
            return JSONResponse({"status": "failed", "detail": public_message(failure)}, status_code=503)
        storage = state.jobs.storage_problem() if state.jobs is not None else None
        return {"status": "degraded", "storage": storage} if storage else {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if state.ready:
            return {"status": "ready", "model": config.model.model, "warmup_seconds": round(state.warmup_seconds, 3),
                    "attention_backend": state.engine.core.executor.attention_backend,
                    "sequence_parallel_size": config.engine.sequence_parallel_size}
        status = "failed" if state.load_error else "loading"
        return JSONResponse({"status": status, "detail": state.load_error}, status_code=503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        waiting, running = state.engine.queue_depth() if state.engine is not None else (0, 0)
        return Response(state.metrics.exposition(waiting, running), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", dependencies=auth, response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=name, created=int(state.started)) for name in config.served_model_names])

    @app.post("/v1/videos", dependencies=auth, response_model=VideoObject, openapi_extra=CREATE_BODY_SCHEMA)
    async def create_video(request: Request) -> JSONResponse:
        body, uploads = await parse_create_request(request)
        record = await state.create_job(body, uploads, requested_job_id(request, state))
        view = video_object(state.require_jobs(), record)
        return JSONResponse(view.model_dump(), headers={"openai-poll-after-ms": POLL_AFTER_MS})

    @app.post("/v1/videos/sync", dependencies=auth, response_class=FileResponse, openapi_extra=CREATE_BODY_SCHEMA)
    async def create_video_sync(request: Request):
        body, uploads = await parse_create_request(request)
        if body.live and not body.keep:
            raise ApiError(422, "invalid_value", "a live stream (realtime without num_frames or seconds) has no MP4 "
                                                 "to answer with: give num_frames or seconds, or keep: true",
                           "num_frames")
        record = await state.create_job(body, uploads, requested_job_id(request, state))
        jobs = state.require_jobs()
        final = await until_disconnected(request, jobs.wait_final(record.id))
        if final is None:  # nobody is left to send the video to: stop making it
            with contextlib.suppress(JobNotFoundError):
                await jobs.delete(record.id)  # the engine aborts it; counted as cancelled
            return Response(status_code=499)
        if final.status is JobStatus.FAILED:
            raise ApiError(500, final.error_code or "generation_failed", final.error_message or "generation failed")
        return FileResponse(jobs.files.video(record.id), media_type="video/mp4", filename=f"{record.id}.mp4")

    @app.get("/v1/videos", dependencies=auth, response_model=VideoList)
    async def list_videos(
        after: str | None = Query(default=None, max_length=64),
        limit: int = Query(default=20, ge=1, le=100),
        order: str = Query(default="desc", pattern="^(asc|desc)$"),
    ) -> VideoList:
        jobs = state.require_jobs()
        records, has_more = await jobs.page(after, limit, order)
        data = [video_object(jobs, r) for r in records]
        return VideoList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                         has_more=has_more)

    @app.get("/v1/videos/{video_id}", dependencies=auth, response_model=VideoObject)
    async def retrieve_video(video_id: str) -> JSONResponse:
        jobs = state.require_jobs()
        view = video_object(jobs, await jobs.get(video_id))
        return JSONResponse(view.model_dump(), headers={"openai-poll-after-ms": POLL_AFTER_MS})

    @app.delete("/v1/videos/{video_id}", dependencies=auth, response_model=VideoDeleted)
    async def delete_video(video_id: str) -> VideoDeleted:
        await state.require_jobs().delete(video_id)  # a running job is counted as cancelled by its task
        return VideoDeleted(id=video_id)

    @app.post("/v1/videos/{video_id}/prompt", dependencies=auth, response_model=VideoPromptChanged,
              openapi_extra=json_body_schema("VideoPromptRequest"))
    async def change_prompt(video_id: str, request: Request) -> VideoPromptChanged:
        """The running video follows a new prompt from its next chunk not begun (409 once every
        chunk has begun or the video is finished); the schedule is recorded with the job."""
        data = parse_json(await request.body() or b"null")
        if not isinstance(data, dict):
            raise ApiError(422, "invalid_value", "the body must be a JSON object")
        body = VideoPromptRequest.model_validate(data)
        from_chunk, record = await state.require_jobs().switch_prompt(video_id, body.prompt, body.transition_chunks)
        return VideoPromptChanged(id=video_id, from_chunk=from_chunk, prompt=body.prompt,
                                  transition_chunks=body.transition_chunks,
                                  prompt_schedule=record.request["prompt_schedule"])

    @app.post("/v1/videos/{video_id}/extend", dependencies=auth, response_model=VideoObject,
              openapi_extra=json_body_schema("VideoExtendRequest"))
    async def extend_video(video_id: str, request: Request) -> JSONResponse:
        """A new video: this completed one continued (jobs/extend.py), exactly the one longer video
        whose prompt switches where the original ends. 410 once the original has expired."""
        data = parse_json(await request.body() or b"null")
        if not isinstance(data, dict):
            raise ApiError(422, "invalid_value", "the body must be a JSON object")
        body = VideoExtendRequest.model_validate(data)
        jobs = state.require_jobs()
        record = await jobs.extend(video_id, num_frames=body.num_frames, seconds=body.seconds, prompt=body.prompt,
                                   seed=body.seed, transition_chunks=body.transition_chunks)
        return JSONResponse(video_object(jobs, record).model_dump(), headers={"openai-poll-after-ms": POLL_AFTER_MS})

    @app.get("/v1/videos/{video_id}/content", dependencies=auth, response_class=FileResponse)
    async def video_content(video_id: str, variant: str = Query(default="video", pattern="^(video|thumbnail)$")):
        jobs = state.require_jobs()
        record = await jobs.get(video_id)
        if variant == "thumbnail" and jobs.files.thumbnail(video_id).exists():
            return FileResponse(jobs.files.thumbnail(video_id), media_type="image/webp")
        if record.request.get("live") and not record.request.get("keep"):
            raise JobConflictError(f"video {video_id} is a live stream: it keeps only its last segments and has no "
                                   "MP4 (create it with keep: true for one)", "no_video_file")
        if record.status is not JobStatus.COMPLETED:
            raise JobConflictError(f"video {video_id} is {record.status}; its content is not ready", "video_not_ready")
        return FileResponse(jobs.files.video(video_id), media_type="video/mp4", filename=f"{video_id}.mp4")

    from .playground import install_playground
    from .realtime import install_realtime
    from .streaming import install_streaming

    install_streaming(app, state, auth)
    install_realtime(app, state)
    install_playground(app)
    if replica_id is not None:
        from .replica import install_replica_routes

        install_replica_routes(app, state, auth)
    openapi.install(app)
    return app


async def until_disconnected(request: Request, work):
    """``work``'s result, or None (and ``work`` cancelled) if the client disconnects first.

    Once the body is read, the next ASGI message of a request is its client's disconnect."""

    async def disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    tasks = [asyncio.ensure_future(work), asyncio.ensure_future(disconnect())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    return tasks[0].result() if tasks[0] in done else None


def install_middleware(app: FastAPI, config: HeliosConfig, behind_ingress: bool) -> None:
    """Outermost first: internal errors as JSON 500s (catching those of the middleware too);
    CORS for --allowed-origins (so its headers are on refusals too); Host, Origin and
    Content-Type checks; the body size limit."""
    server = config.server
    hosts = HostPolicy.for_server(server, behind_ingress)
    app.add_middleware(BodySizeLimit, max_bytes=int(server.max_upload_mb * 2**20))
    app.add_middleware(WebSafety, hosts=hosts, origins=OriginPolicy.for_server(server, hosts, behind_ingress))
    if server.allowed_origin_list:
        app.add_middleware(CORSMiddleware, allow_origins=list(server.allowed_origin_list),
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["authorization", "content-type"],
                           expose_headers=["openai-poll-after-ms", "retry-after"], max_age=600)
    app.add_middleware(InternalErrorsAsJson)


CREATE_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/VideoCreateRequest"}},
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/VideoCreateForm"}},
        },
    }
}


def json_body_schema(model: str) -> dict:
    """The OpenAPI request body of a route that reads a JSON object of ``model`` itself."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}}}


def install_error_handlers(app: FastAPI) -> None:
    def answer(error: ApiError) -> JSONResponse:
        return JSONResponse(error_body(error.status, error.code, error.message, error.param), error.status,
                            headers=error.headers)

    async def known(request: Request, exc: Exception) -> JSONResponse:
        return answer(api_error(exc))

    for kind in (ApiError, *ERROR_TABLE):
        app.add_exception_handler(kind, known)

    @app.exception_handler(RequestValidationError)
    @app.exception_handler(ValidationError)
    async def invalid(request: Request, exc) -> JSONResponse:
        first = exc.errors()[0]
        location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
        param = ".".join(location) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return answer(ApiError(422, "invalid_value", message, param))

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return answer(ApiError(413, "payload_too_large", str(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        return answer(ApiError(exc.status_code, "http_error", str(exc.detail), headers=headers or None))
    # Any other exception: InternalErrorsAsJson (install_middleware) answers a JSON 500.


def allowed_methods(request: Request) -> str:
    """Every method some route takes at this path. Starlette's own 405 names only those of the
    first route with the path, and /v1/videos has one route per method."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))
