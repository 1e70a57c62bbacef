"""The ingress: one HTTP endpoint with the single server's API in front of N engine replicas.

It forwards each request to the right replica's own HTTP server (routing.py decides which),
streams the answer back unchanged (MP4s, SSE, HLS segments) and bridges the realtime
WebSocket, so replicas run the same code as a single server. A background loop polls every
replica's load and readiness and hands the unfinished jobs of a dead replica to a living one,
which resumes them from their last completed chunk.

The endpoint guards itself as a single server does (the same middleware, from the same config):
the Host, Origin and Content-Type checks, CORS and the body size limit all apply before anything
is buffered or forwarded.
"""


import asyncio
import logging
import time

import httpx
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.background import BackgroundTask

from ...config import HeliosConfig
from ...entrypoints.openai.api_server import install_error_handlers, install_middleware
from ...entrypoints.openai.errors import error_body
from ...entrypoints.openai.replica import JOB_ID_HEADER
from ...jobs.storage import JobFiles, new_job_id
from ...jobs.status import ACTIVE_STATUSES
from ...jobs.store import open_job_store
from .routing import (
    ReplicaView,
    dead_instances,
    least_loaded,
    merge_metrics,
    orphaned_jobs,
    replica_count_metrics,
)

logger = logging.getLogger(__name__)
POLL_INTERVAL_S = 0.5
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}
CREATE_PATHS = ("/v1/videos", "/v1/videos/sync")
FORWARDED_METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"]
WEBSOCKET_HEADERS = {"authorization", "origin"}
"""Sent on to the replica's WebSocket (its own Origin check then sees what the ingress saw)."""


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, code, message), status, headers=headers)


def build_ingress_app(ingress: "HeliosIngress") -> FastAPI:
    """The endpoint's routes, over the ingress's methods, behind the single server's middleware."""
    # The docs and the schema are a replica's (forwarded like every other path): the ingress's own
    # would describe only its catch-all route and load Swagger UI from a CDN.
    app = FastAPI(title="helios-serve (Ray)", description="OpenAI-style video API over Ray Serve engine replicas.",
                  docs_url=None, redoc_url=None, openapi_url=None)
    install_middleware(app, ingress.config, behind_ingress=False)  # it sees the client's own Host and Origin
    install_error_handlers(app)
    app.get("/health")(ingress.health)
    app.get("/ready")(ingress.ready)
    app.get("/metrics")(ingress.metrics)
    app.websocket("/v1/realtime/video")(ingress.realtime)
    app.api_route("/{path:path}", methods=FORWARDED_METHODS)(ingress.forward)
    return app


@serve.deployment(max_ongoing_requests=1000)
@serve.ingress()  # the app is built once the config is known: __serve_build_asgi_app__
class HeliosIngress:
    def __init__(self, replicas: dict, config: HeliosConfig):
        server = config.server
        self.config = config
        self.model_name = config.served_model_names[0]  # the model_name label of the ingress's gauges
        self.handles = replicas  # slot -> DeploymentHandle of a HeliosReplica deployment
        self.views = {slot: ReplicaView(slot) for slot in replicas}
        self.store = open_job_store(server.job_store or JobFiles(server.data_dir).database)
        self.internal_headers = {"authorization": f"Bearer {server.api_key}"} if server.api_key else {}
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None))
        self.poller = asyncio.get_event_loop().create_task(self._poll_forever())

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_ingress_app(self)

    # -- replica health and job adoption ----------------------------------------------------
    async def _poll_forever(self) -> None:
        while True:
            try:
                await asyncio.gather(*(self._poll(slot) for slot in self.handles))
                await self._adopt_orphans()
            except Exception:  # noqa: BLE001 - the loop must outlive any one bad poll
                logger.exception("polling the replicas failed")
            await asyncio.sleep(POLL_INTERVAL_S)

    async def _poll(self, slot: str) -> None:
        view = self.views[slot]
        creates_sent_before = view.creates_sent
        try:
            address = await asyncio.wait_for(self.handles[slot].address.remote(), timeout=2)
            answer = await self.client.get(f"{address['url']}/internal/status", headers=self.internal_headers,
                                           timeout=2)
            answer.raise_for_status()
            view.record_answer(answer.json(), address["url"], time.monotonic(), creates_sent_before)
        except Exception:  # noqa: BLE001 - an unreachable replica is the normal case being watched for
            view.record_silence(time.monotonic())

    async def _adopt_orphans(self) -> None:
        active = [(r.id, r.owner) for r in await asyncio.to_thread(self.store.with_status, ACTIVE_STATUSES)]
        views = list(self.views.values())
        dead = dead_instances(views)
        for owner, job_ids in orphaned_jobs(active, views).items():
            target = least_loaded(views, avoid=dead[owner])
            if target is None:
                return  # nobody can take them yet; retried at the next poll
            answer = await self.client.post(f"{target.url}/internal/adopt", headers=self.internal_headers,
                                            json={"job_ids": job_ids, "previous_owner": owner})
            if answer.status_code == 200:
                adopted = answer.json()["adopted"]
                target.record_create(len(adopted))
                logger.warning("replica instance %s is gone: %s resumed %s", owner, target.slot, adopted)

    # -- the endpoint's own routes -------------------------------------------------------------
    async def health(self) -> dict:
        return {"status": "ok"}

    async def ready(self) -> JSONResponse:
        replicas = {v.slot: {"ready": v.ready, "waiting": v.waiting, "running": v.running, "load_error": v.load_error}
                    for v in self.views.values()}
        all_ready = all(v.ready for v in self.views.values())
        return JSONResponse({"status": "ready" if all_ready else "not_ready", "replicas": replicas},
                            200 if all_ready else 503)

    async def metrics(self) -> Response:
        live = [v for v in self.views.values() if v.url and v.instance]
        answers = await asyncio.gather(*(self.client.get(f"{v.url}/metrics", timeout=5) for v in live),
                                       return_exceptions=True)
        texts = {v.slot: a.text for v, a in zip(live, answers) if isinstance(a, httpx.Response) and a.is_success}
        ready = sum(v.ready for v in self.views.values())
        own = replica_count_metrics(self.model_name, ready, len(self.views))
        return Response(merge_metrics(texts) + own, media_type="text/plain; version=0.0.4")

    # -- forwarding ------------------------------------------------------------------------------
    async def forward(self, path: str, request: Request) -> Response:
        path = "/" + path
        if path.startswith("/internal/"):
            return _error(404, "not_found", f"no route {path}")
        method = request.method
        creating = method == "POST" and path in CREATE_PATHS
        headers = {k: v for k, v in request.headers.items() if k.lower() not in (*HOP_BY_HOP, JOB_ID_HEADER)}
        if creating:
            job_id = headers[JOB_ID_HEADER] = new_job_id()  # the same id if the create must go elsewhere
        body = await request.body()  # kept, so the request can go to another replica
        tried: set[str] = set()
        while (target := await self._target(creating, path, tried)) is not None:
            upstream = self.client.build_request(method, f"{target.url}{path}", params=request.query_params,
                                                 headers=headers, content=body)
            if creating:
                target.record_create()
            try:
                answer = await self.client.send(upstream, stream=True)
            except httpx.TransportError as exc:
                # It died since the last poll: another replica answers instead.
                target.ready = False
                tried.add(target.slot)
                if creating and not isinstance(exc, httpx.ConnectError):
                    # The create may have arrived. If the job was recorded, it is adopted and
                    # resumed elsewhere: answer with it; if not, create it on another replica.
                    if await asyncio.to_thread(self.store.get, job_id) is not None:
                        if path != "/v1/videos":  # /sync waits for an MP4 that is not there yet
                            return _error(503, "replica_lost", f"replica {target.slot} failed; the job continues: "
                                          f"GET /v1/videos/{job_id}", {"Retry-After": "2"})
                        method, path, body, creating = "GET", f"/v1/videos/{job_id}", b"", False
                continue
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
            return StreamingResponse(answer.aiter_raw(), answer.status_code, headers=kept,
                                     background=BackgroundTask(answer.aclose))
        return _error(503, "no_replica_ready", "no engine replica is ready; retry shortly", {"Retry-After": "5"})

    async def _target(self, creating: bool, path: str, tried: set[str]) -> ReplicaView | None:
        views = [v for v in self.views.values() if v.slot not in tried]
        owner = None if creating else await self._owner_of(path)
        return owner if owner is not None and owner.slot not in tried else least_loaded(views)

    async def _owner_of(self, path: str) -> ReplicaView | None:
        """The live replica that owns the job named in the path, if any (others can read the
        shared store and files, e.g. for the videos of a replica that died)."""
        parts = path.split("/")
        if len(parts) < 4 or parts[1:3] != ["v1", "videos"]:
            return None
        record = await asyncio.to_thread(self.store.get, parts[3])  # a database query: off the event loop
        return next((v for v in self.views.values() if record and v.ready and v.instance == record.owner), None)

    # -- the realtime WebSocket ------------------------------------------------------------------
    async def realtime(self, websocket: WebSocket) -> None:
        """A live session stays on one replica: bridged for its whole life, both directions."""
        import websockets

        await websocket.accept()
        target = least_loaded(list(self.views.values()))
        if target is None:
            await websocket.send_json({"type": "error", "message": "no engine replica is ready"})
            await websocket.close(code=1013)
            return
        target.record_create()
        query = websocket.url.query
        url = target.url.replace("http://", "ws://") + "/v1/realtime/video" + (f"?{query}" if query else "")
        headers = {k: v for k, v in websocket.headers.items() if k.lower() in WEBSOCKET_HEADERS}
        try:
            upstream = await websockets.connect(url, additional_headers=headers, max_size=None)
        except OSError:
            target.ready = False
            await websocket.send_json({"type": "error", "message": f"replica {target.slot} did not answer; retry"})
            await websocket.close(code=1013)
            return
        async with upstream:

            async def client_to_replica() -> None:
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        await upstream.close()
                        return
                    await upstream.send(message.get("text") or message.get("bytes"))

            async def replica_to_client() -> None:
                async for message in upstream:
                    if isinstance(message, bytes):
                        await websocket.send_bytes(message)
                    else:
                        await websocket.send_text(message)
                await websocket.close()

            tasks = [asyncio.create_task(client_to_replica()), asyncio.create_task(replica_to_client())]
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
