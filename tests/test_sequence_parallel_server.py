"""`helios-serve serve --sequence-parallel-size 2`: one command, one port, a second rank the
server starts itself; the OpenAI API end to end, and what clients see when a rank dies."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from live_server import start_server
from test_server_api import decode_mp4, wait_for


@pytest.fixture(scope="module")
def sp_server(tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("sequence-parallel") / "data", "--sequence-parallel-size", "2",
                        timeout=240)
    yield live
    live.stop()


def worker_ranks(server_pid: int) -> list[int]:
    """Pids of the rank processes the server started (multiprocessing's spawned children)."""
    pids = []  # each thread's children: the ranks are started from the thread that loads the model
    children = [child for task in Path(f"/proc/{server_pid}/task").iterdir() for child in
                (task / "children").read_text().split()]
    for child in children:
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"spawn_main" in cmdline:
            pids.append(int(child))
    return pids


def test_the_openai_sdk_gets_a_video_from_two_ranks(sp_server):
    from openai import OpenAI

    assert len(worker_ranks(sp_server.process.pid)) == 1
    client = OpenAI(base_url=sp_server.api, api_key="unused")
    video = client.videos.create(prompt="a red fox in the snow", size="128x64", extra_body={"num_frames": 65})
    done = wait_for(client, video.id, timeout=120)
    assert done.status == "completed", done
    frames = decode_mp4(client.videos.download_content(video.id).read())
    assert frames.shape == (65, 64, 128, 3)
    assert httpx.get(f"{sp_server.url}/ready").json()["sequence_parallel_size"] == 2


def test_a_dying_rank_fails_the_running_video_and_the_server_says_why(sp_server):
    import os
    import signal

    base = sp_server.api
    job = httpx.post(f"{base}/videos", json={"prompt": "a long walk", "size": "128x64", "num_frames": 660}).json()
    deadline = time.monotonic() + 120
    while httpx.get(f"{base}/videos/{job['id']}").json().get("chunks_completed", 0) < 1:
        assert time.monotonic() < deadline, "no chunk came"
        time.sleep(0.1)
    (rank,) = worker_ranks(sp_server.process.pid)
    os.kill(rank, signal.SIGKILL)
    failed = None
    while time.monotonic() < deadline:
        failed = httpx.get(f"{base}/videos/{job['id']}").json()
        if failed["status"] == "failed":
            break
        time.sleep(0.1)
    assert failed["status"] == "failed", failed
    assert "rank 1 exited" in failed["error"]["message"], failed
    health = httpx.get(f"{sp_server.url}/health")
    assert health.status_code == 503 and "rank 1" in health.json()["detail"]
    refused = httpx.post(f"{base}/videos", json={"prompt": "another", "size": "128x64", "num_frames": 33})
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "engine_unavailable"
    assert sp_server.process.poll() is None  # the server stays up, unhealthy, until restarted
