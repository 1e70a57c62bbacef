"""``helios-serve serve``: the OpenAI-style HTTP server under uvicorn (or Ray Serve replicas)."""

from __future__ import annotations

import argparse
import logging
import socket
import sys

from ..config import HeliosConfig, add_config_arguments, config_from_args

logger = logging.getLogger(__name__)


def add_serve_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the OpenAI-style video API (the main job)",
        description=(
            "Start the HTTP server: OpenAI-style /v1/videos jobs, live streaming (SSE, WebSocket, HLS), "
            "durable jobs in the data directory that resume after a restart. The model loads in the background; "
            "/ready answers 200 once it is loaded and warmed up. Every option but the config file is a field of the "
            "configuration tree (helios_serve/config.py); options take vLLM's names where vLLM has the concept, "
            "and earlier names still work."
        ),
    )
    parser.add_argument("--config", dest="config_file", metavar="FILE", default=None,
                        help="YAML file of options, keyed by option name without the dashes (e.g. max_num_seqs: 4 "
                             "or max-num-seqs: 4, model: helios-tiny); options given on the command line win")
    add_config_arguments(parser, HeliosConfig, positional=("model",))


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _check_tls(certfile: str | None, keyfile: str | None) -> None:
    """Load the certificate and key once: a wrong file stops the start, naming it, before the model loads."""
    if not certfile:
        return
    import ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot use the TLS certificate {certfile}"
                         f"{f' and key {keyfile}' if keyfile else ''}: {exc.strerror or exc}") from None


def _check_job_store(data_dir: str, job_store: str | None) -> None:
    """Open the job store once: one that cannot be opened stops the start, naming it."""
    from ..errors import StoreUnavailableError
    from ..jobs.storage import JobFiles
    from ..jobs.store import open_job_store

    try:
        open_job_store(job_store or JobFiles(data_dir).database).close()
    except StoreUnavailableError as exc:
        raise ValueError(str(exc)) from None


def _check_model(config: HeliosConfig) -> None:
    """An unknown model is one clear error now, not a failed load later."""
    if config.engine.simulate:
        from ..simulated_executor import simulated_variant

        simulated_variant(config.model.model)
    else:
        from ..model_executor.checkpoint import resolve_model

        # As `vllm serve` does, a checkpoint the cache lacks is downloaded now, before the server listens:
        # its progress shows here, a failed download is this one error, and the loader (every Ray replica's
        # too) then finds it in the cache.
        resolve_model(config.model.model, config.model.download_dir, config.model.revision)


def run_serve(args: argparse.Namespace) -> int:
    # The options are checked before anything heavy is imported, so a mistake is reported at once.
    config = config_from_args(HeliosConfig, args)
    server = config.server
    _check_tls(server.ssl_certfile, server.ssl_keyfile)
    _check_job_store(server.data_dir, server.job_store)
    _check_port(server.host, server.port)
    _check_model(config)  # last: it may download the checkpoint, after the quick checks passed
    from ..logging_config import configure_logging

    # Once every check passed: the log setup is the process's (in a test, the test runner's too).
    log_config = configure_logging(server.log_level, log_requests=not server.disable_log_requests)
    if config.scale_out.enabled:
        from ..integrations.ray_serve.launch import run_ray_deployment

        return run_ray_deployment(config)
    return _run_uvicorn(config, log_config)


def _run_uvicorn(config: HeliosConfig, log_config: dict) -> int:
    import uvicorn

    from .openai.api_server import build_app

    server = config.server
    base = server.url
    simulated = f" on a simulated {config.engine.simulate} (no model runs)" if config.engine.simulate else ""
    proxied = f", under {server.root_path} behind its proxy" if server.root_path else ""
    print(f"helios-serve: serving {config.model.model}{simulated} at {base}{proxied} (loading; a log line says when "
          "it is ready)", flush=True)
    print(f"  playground  {base}/   (open it in a browser)", flush=True)
    print(f"  API         {base}/v1   (OpenAI-style: client = OpenAI(base_url='{base}/v1'))", flush=True)
    print(f"  docs        {base}/docs; readiness {base}/ready; metrics {base}/metrics", flush=True)
    logger.info("jobs and videos in %s", server.data_dir)
    app = build_app(config)
    runner = uvicorn.Server(uvicorn.Config(
        app, host=server.host, port=server.port, log_config=log_config,
        log_level=server.uvicorn_log_level or server.log_level, access_log=False, root_path=server.root_path,
        ssl_keyfile=server.ssl_keyfile, ssl_certfile=server.ssl_certfile))
    app.state.server.stop_serving = lambda: setattr(runner, "should_exit", True)
    runner.run()
    if app.state.server.load_error:
        print(f"helios-serve: error: {app.state.server.load_error}", file=sys.stderr)
        return 1
    return 0
