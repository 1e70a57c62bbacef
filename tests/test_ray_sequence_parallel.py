"""Ray Serve with a sequence-parallel replica: `serve helios-tiny --replicas 1 --sequence-parallel-size 2`
on a local Ray. The replica's actor (in its placement group) starts its second rank itself."""

from __future__ import annotations

import time

import httpx
import psutil
from live_server import start_ray_server
from test_ray_serve import replica_processes, wait_completed


def test_a_two_rank_replica_serves_a_video_behind_the_ingress(tmp_path):
    started = time.monotonic()
    server = start_ray_server(tmp_path / "data", 1, "helios-tiny", "--sequence-parallel-size", "2")
    try:
        print(f"one two-rank replica ready in {time.monotonic() - started:.1f} s")
        (replica,) = replica_processes("replica-0")
        ranks = [child for child in replica.children() if "spawn_main" in " ".join(child.cmdline())]
        assert len(ranks) == 1, replica.children()
        answer = httpx.post(f"{server.api}/videos", json={"prompt": "a fox", "num_frames": 65, "size": "128x64"},
                            timeout=60)
        assert answer.status_code == 200, answer.text
        job = wait_completed(server, answer.json()["id"])
        assert job["chunks_completed"] == 2
    finally:
        server.stop()
    deadline = time.monotonic() + 30
    while any(p.is_running() for p in ranks if _alive(p)):
        assert time.monotonic() < deadline, "the replica's rank outlived the server"
        time.sleep(0.5)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
