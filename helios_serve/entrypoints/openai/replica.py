"""Routes of a server that is one engine replica behind the Ray router (build_app's replica_id).

The router polls /internal/status for each replica's load and readiness, and when a replica
dies, asks a living one to adopt its unfinished jobs with /internal/adopt. The router does
not forward /internal/ paths from clients.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from pydantic import BaseModel

from ...jobs.storage import is_job_id

JOB_ID_HEADER = "x-helios-job-id"
"""The id the ingress chose for a job it creates, so that a create it must send again (its
replica died mid-request) cannot make the job twice. Only replicas read it."""


def requested_job_id(request: Request, state) -> str | None:
    job_id = request.headers.get(JOB_ID_HEADER)
    return job_id if state.replica_id is not None and job_id and is_job_id(job_id) else None


class AdoptRequest(BaseModel):
    job_ids: list[str]
    previous_owner: str


def install_replica_routes(app: FastAPI, state, auth: list) -> None:
    @app.get("/internal/status", dependencies=auth, include_in_schema=False)  # the router's, not clients'
    async def status() -> dict:
        waiting, running = state.engine.queue_depth() if state.engine is not None else (0, 0)
        return {"instance": state.replica_id, "ready": state.ready, "load_error": state.load_error,
                "waiting": waiting, "running": running}

    @app.post("/internal/adopt", dependencies=auth, include_in_schema=False)
    async def adopt(request: AdoptRequest) -> dict:
        return {"adopted": await state.require_jobs().adopt(request.job_ids, request.previous_owner)}
