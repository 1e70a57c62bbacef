"""``helios-serve serve``: the OpenAI-style HTTP server under uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import socket

from ..config import EngineConfig, add_config_arguments, config_from_args


def add_serve_parser(subparsers, default_model: str) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the OpenAI-style video API (the main job)",
        description=(
            "Start the HTTP server: OpenAI-style /v1/videos jobs, live streaming (SSE, WebSocket, HLS), "
            "durable jobs under --data-dir that resume after a restart. The model loads in the background; "
            "/ready answers 200 once it is loaded and warmed up."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", nargs="?", default=default_model,
                        help="helios-tiny, helios-base|mid|distilled, a cached Hugging Face repo id or a checkpoint dir")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port")
    parser.add_argument("--api-key", default=os.environ.get("HELIOS_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on /v1 (default: $HELIOS_API_KEY, else no key)")
    parser.add_argument("--data-dir", default="./helios-data", help="job database and video files")
    parser.add_argument("--retention-hours", type=float, default=24.0, help="finished videos are deleted after this")
    parser.add_argument("--max-upload-mb", type=float, default=64.0, help="largest request body (image/video uploads)")
    parser.add_argument("--device", default="auto", help="torch device; auto is cuda when available, else cpu")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="transformer dtype; auto is bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--kernels", default="auto", choices=("auto", "triton", "native"),
                        help="elementwise kernels of the transformer; auto is triton on CUDA, native elsewhere")
    add_config_arguments(parser.add_argument_group("engine (the step scheduler's budgets and policy)"), EngineConfig)
    ray = parser.add_argument_group("scale out with Ray Serve (pip install 'helios-serve[ray]')")
    ray.add_argument("--replicas", type=int, default=None,
                     help="run this many engine replicas behind one endpoint with Ray Serve [one process, no Ray]")
    ray.add_argument("--ray-address", default=None,
                     help="join this Ray cluster (e.g. ray://head:10001 or auto); without it a local Ray is started")
    ray.add_argument("--gpus-per-replica", type=float, default=None,
                     help="GPUs each replica reserves [1 when the machine has a GPU, else 0]")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs each replica reserves")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..model_executor.checkpoint import resolve_model
    from .openai.api_server import ServerConfig, build_app

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be from 1 to 65535, got {args.port}")
    resolve_model(args.model)  # an unknown model is one clear error now, not a failed load later
    _check_port(args.host, args.port)
    engine = config_from_args(EngineConfig, args)
    config = ServerConfig(
        model=args.model, data_dir=args.data_dir, api_key=args.api_key, retention_hours=args.retention_hours,
        max_upload_mb=args.max_upload_mb, device=None if args.device == "auto" else args.device,
        dtype=None if args.dtype == "auto" else args.dtype, engine=engine,
        kernels=None if args.kernels == "auto" else args.kernels,
    )
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.replicas is not None or args.ray_address is not None:
        from ..integrations.ray_serve.launch import RayDeployment, run_ray_deployment

        replicas = 1 if args.replicas is None else args.replicas  # --ray-address alone: one replica
        deployment = RayDeployment(replicas=replicas, ray_address=args.ray_address,
                                   gpus_per_replica=args.gpus_per_replica, cpus_per_replica=args.cpus_per_replica)
        return run_ray_deployment(config, deployment, args.host, args.port)
    base = f"http://{args.host}:{args.port}"
    print(f"helios-serve: serving {args.model} at {base}", flush=True)
    print(f"  playground  {base}/   (open it in a browser)", flush=True)
    print(f"  API         {base}/v1   (OpenAI-style: client = OpenAI(base_url='{base}/v1'))", flush=True)
    print(f"  docs        {base}/docs; readiness {base}/ready; metrics {base}/metrics", flush=True)
    uvicorn.run(build_app(config), host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0
