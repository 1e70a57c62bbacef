"""``helios-serve serve MODEL --replicas N``: N engine replicas behind one endpoint on Ray Serve.

With ``--sequence-parallel-size S`` each replica is a group of S ranks on S GPUs of one node.

Every replica and the ingress share ``--data-dir`` (the job store and the video files): on one
machine that is just a directory; across machines it must be a shared filesystem mounted at the
same path on every node (see README, "Scaling out with Ray").
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time

import httpx

from ...config import HeliosConfig


def build_application(config: HeliosConfig, replicas: int, gpus_per_replica: float, replica_host: str | None):
    """The Ray Serve application: one deployment per replica slot, and the ingress over them."""
    from .ingress import HeliosIngress
    from .replica import HeliosReplica

    options = replica_options(config.scale_out.cpus_per_replica, gpus_per_replica)
    slots = {
        f"replica-{i}": HeliosReplica.options(name=f"helios-replica-{i}", **options).bind(
            config, f"replica-{i}", replica_host
        )
        for i in range(replicas)
    }
    ingress = HeliosIngress.options(name="helios-ingress", ray_actor_options={"num_cpus": 0})
    return ingress.bind(slots, config)


def replica_options(cpus: float, gpus: float) -> dict:
    """A replica's Ray resources: one placement-group bundle holds all of them, so the GPUs of a
    sequence-parallel group are on one node (the replica's actor runs in that bundle and starts
    its other ranks as its own processes, on the GPUs Ray gave it)."""
    bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    return {"ray_actor_options": {"num_cpus": cpus, "num_gpus": gpus}, "placement_group_bundles": [bundle],
            "placement_group_strategy": "STRICT_PACK"}


def replica_gpus(config: HeliosConfig, cluster_has_gpus: bool) -> float:
    """GPUs each replica reserves: --gpus-per-replica, else one per sequence-parallel rank (and one
    for a VAE on a GPU of its own) when the cluster has GPUs. ValueError when too few are asked."""
    ranks = config.engine.sequence_parallel_size
    vae_gpu = 1 if (config.model.vae_device or "").startswith("cuda") else 0
    gpus = config.scale_out.gpus_per_replica
    if gpus is None:
        return float(ranks + vae_gpu) if cluster_has_gpus else 0.0
    if gpus and gpus < ranks + vae_gpu:
        raise ValueError(f"gpus_per_replica is {gpus:g}, but each replica runs {ranks} sequence-parallel rank(s)"
                         + (" and a VAE GPU" if vae_gpu else "") + f": it needs {ranks + vae_gpu}")
    return gpus


def run_ray_deployment(config: HeliosConfig) -> int:
    """Deploy, print where to connect, and serve until interrupted (then tear everything down)."""
    deployment, host, port = config.scale_out, config.server.host, config.server.port
    replicas = deployment.replicas or 1  # --ray-address alone: one replica
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ValueError("--replicas needs Ray Serve: pip install 'helios-serve[ray]'") from None

    # Replicas run in other processes (other machines): they need the data dir's absolute path.
    server = dataclasses.replace(config.server, data_dir=os.path.abspath(config.server.data_dir))
    config = dataclasses.replace(config, server=server)
    os.makedirs(server.data_dir, exist_ok=True)
    started = time.monotonic()
    ray.init(address=deployment.ray_address, namespace="helios-serve", include_dashboard=False)
    # A local Ray keeps replicas on this machine, reachable on loopback; in a cluster each
    # replica serves on its own node's address (None: decided inside the replica).
    replica_host = "127.0.0.1" if deployment.ray_address is None else None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop cleanly when stopped by pid
    try:
        gpus = replica_gpus(config, ray.cluster_resources().get("GPU", 0) > 0)
        serve.start(http_options={"host": host, "port": port})
        application = build_application(config, replicas, gpus, replica_host)
        serve.run(application, name="helios", route_prefix="/", logging_config={"enable_access_log": False})
        base = f"http://{host}:{port}"
        print(f"helios-serve: {replicas} replica(s) of {config.model.model} on Ray Serve at {base} "
              f"({gpus:g} GPU, {deployment.cpus_per_replica:g} CPU each)", flush=True)
        print(f"  playground  {base}/   (open it in a browser)", flush=True)
        print(f"  API         {base}/v1   (OpenAI-style: client = OpenAI(base_url='{base}/v1'))", flush=True)
        print(f"  readiness   {base}/ready (all replicas); metrics {base}/metrics (per replica and total)", flush=True)
        failure = _wait_until_ready(base, started)
        while failure is None:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"helios-serve: error: {failure}", file=sys.stderr)  # last, after Ray's own shutdown lines
    return 1


def _wait_until_ready(base: str, started: float) -> str | None:
    """None once every replica is ready; the first load error a replica reports, if one does
    first: a model that cannot load stops the start, as it does for a single server (Ray Serve
    would otherwise restart that replica for ever)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per readiness poll
    while True:
        try:
            answer = httpx.get(f"{base}/ready", timeout=5)
            if answer.status_code == 200:
                print(f"helios-serve: all replicas ready after {time.monotonic() - started:.1f} s", flush=True)
                return None
            for slot, replica in sorted(answer.json().get("replicas", {}).items()):
                if replica.get("load_error"):
                    return f"{slot}: {replica['load_error']}"
        except (httpx.HTTPError, ValueError):  # not up yet, or another answer than the ingress's
            pass
        time.sleep(0.5)
