"""``helios-serve serve``: the OpenAI-style HTTP server under uvicorn (or Ray Serve replicas)."""

from __future__ import annotations

import argparse
import logging
import socket
import sys

from ..config import HeliosConfig, add_config_arguments, config_from_args


def add_serve_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the OpenAI-style video API (the main job)",
        description=(
            "Start the HTTP server: OpenAI-style /v1/videos jobs, live streaming (SSE, WebSocket, HLS), "
            "durable jobs under --data-dir that resume after a restart. The model loads in the background; "
            "/ready answers 200 once it is loaded and warmed up. Every option below is a field of the "
            "configuration tree (helios_serve/config.py)."
        ),
    )
    add_config_arguments(parser, HeliosConfig, positional=("model",))


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _check_job_store(data_dir: str) -> None:
    """Open the job store once: a file that is not one stops the start, naming the file."""
    from ..errors import StoreUnavailableError
    from ..jobs.storage import JobFiles
    from ..jobs.store import JobStore

    try:
        JobStore(JobFiles(data_dir).database).close()
    except StoreUnavailableError as exc:
        raise ValueError(str(exc)) from None


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..model_executor.checkpoint import resolve_model
    from ..simulated_executor import simulated_variant
    from .openai.api_server import build_app

    config = config_from_args(HeliosConfig, args)  # a bad value is one clear error here
    server = config.server
    # An unknown model or a damaged job store is one clear error now, not a failed load later.
    if config.engine.simulate:
        simulated_variant(config.model.model)
    else:
        resolve_model(config.model.model)
    _check_job_store(config.server.data_dir)
    _check_port(server.host, server.port)
    logging.basicConfig(level=server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.scale_out.enabled:
        from ..integrations.ray_serve.launch import run_ray_deployment

        return run_ray_deployment(config)
    base = f"http://{server.host}:{server.port}"
    simulated = f" on a simulated {config.engine.simulate} (no model runs)" if config.engine.simulate else ""
    print(f"helios-serve: serving {config.model.model}{simulated} at {base}", flush=True)
    print(f"  playground  {base}/   (open it in a browser)", flush=True)
    print(f"  API         {base}/v1   (OpenAI-style: client = OpenAI(base_url='{base}/v1'))", flush=True)
    print(f"  docs        {base}/docs; readiness {base}/ready; metrics {base}/metrics", flush=True)
    app = build_app(config)
    runner = uvicorn.Server(uvicorn.Config(app, host=server.host, port=server.port, log_level=server.log_level,
                                           access_log=False))
    app.state.server.stop_serving = lambda: setattr(runner, "should_exit", True)
    runner.run()
    if app.state.server.load_error:
        print(f"helios-serve: error: {app.state.server.load_error}", file=sys.stderr)
        return 1
    return 0
