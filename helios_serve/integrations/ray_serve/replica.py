"""One engine replica as a Ray Serve deployment: our whole server (engine, jobs, streaming) in
the replica's actor, listening on its own port of the node for the ingress to forward to.

Each slot is its own deployment with one replica, so the ingress can address it by name and
Ray Serve restarts it (a new actor, a new instance id) when it dies or fails its health check.
"""

from __future__ import annotations

import socket
import threading
import uuid

from ray import serve

from ...config import HeliosConfig
from ...entrypoints.openai.api_server import build_app
from ...logging_config import set_request_logging


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@serve.deployment(max_ongoing_requests=64, health_check_period_s=2, health_check_timeout_s=10)
class HeliosReplica:
    def __init__(self, config: HeliosConfig, slot: str, host: str | None):
        import ray
        import uvicorn

        host = host or ray.util.get_node_ip_address()  # in a cluster: this replica's own node
        self.instance = f"{slot}-{uuid.uuid4().hex[:8]}"
        set_request_logging(not config.server.disable_log_requests)  # this actor's process, as serve does
        self.app = build_app(config, replica_id=self.instance)
        port = _free_port(host)
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name=f"helios-{slot}", daemon=True)
        self.thread.start()

    def address(self) -> dict:
        """Where this replica serves HTTP, and which actor incarnation it is."""
        return {"url": self.url, "instance": self.instance}

    def check_health(self) -> None:
        """Ray Serve restarts a replica whose HTTP server stopped or whose model failed to load."""
        if not self.thread.is_alive():
            raise RuntimeError("the replica's HTTP server stopped")
        state = self.app.state.server
        if state.load_error:
            raise RuntimeError(state.load_error)
        if state.engine is not None and state.engine.dead:  # a rank died: a new actor starts a new group
            raise RuntimeError(state.engine.dead)
