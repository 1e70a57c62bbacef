"""Ray Serve for real: `helios-serve serve helios-tiny --replicas 2 --job-store postgresql://...` on a
local Ray (token auth on) and a real PostgreSQL server.

One deployment serves every test here: jobs spread over both replicas, streams pass through
the ingress, metrics and readiness cover both, and killing a replica's actor mid-job loses
nothing (its jobs finish on the other replica with the frames of an uninterrupted run).
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
import pytest

from helios_serve.jobs.store import open_job_store
from helios_serve.video_io import read_video
from live_server import start_ray_server

SMALL = {"num_frames": 66, "size": "128x64"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres):
    """Two replicas whose jobs are recorded on PostgreSQL (as replicas on several machines would
    share them; the SQLite default shares a file, and the store's interface is the same: see
    tests/test_job_store_backends.py)."""
    started = time.monotonic()
    store = postgres.create_database("ray_jobs")
    server = start_ray_server(tmp_path_factory.mktemp("ray") / "data", 2, "helios-tiny", "--job-store", store)
    server.job_store = store
    print(f"2 replicas ready in {time.monotonic() - started:.1f} s")
    yield server
    server.stop()
    deadline = time.monotonic() + 30
    while replica_processes():  # Ray's own processes go with the server
        assert time.monotonic() < deadline, "Ray Serve replicas outlived the server"
        time.sleep(0.5)


def replica_processes(slot: str = "") -> list[psutil.Process]:
    marker = f"ServeReplica:helios:helios-{slot}"
    return [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]


def create(cluster, **body) -> str:
    answer = httpx.post(f"{cluster.api}/videos", json={"prompt": "a fox", **SMALL, **body}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def wait_completed(cluster, video_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while (job := httpx.get(f"{cluster.api}/videos/{video_id}", timeout=30).json())["status"] != "completed":
        assert job["status"] in ("queued", "in_progress"), job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def owners(cluster) -> dict[str, str]:
    """job id -> replica slot, from the shared job store."""
    store = open_job_store(cluster.job_store)
    try:
        rows = store._fetchall("SELECT id, owner FROM videos")
    finally:
        store.close()
    return {row["id"]: row["owner"].rsplit("-", 1)[0] for row in rows}


def test_concurrent_jobs_spread_over_both_replicas(cluster):
    with ThreadPoolExecutor(6) as pool:
        ids = list(pool.map(lambda seed: create(cluster, seed=seed), range(6)))
    for video_id in ids:
        wait_completed(cluster, video_id)
        content = httpx.get(f"{cluster.api}/videos/{video_id}/content", timeout=60)
        assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    spread = [owners(cluster)[i] for i in ids]
    assert set(spread) == {"replica-0", "replica-1"}, spread
    print("jobs per replica:", {slot: spread.count(slot) for slot in set(spread)})
    listed = httpx.get(f"{cluster.api}/videos?limit=100", timeout=30).json()["data"]
    assert set(ids) <= {video["id"] for video in listed}  # any replica lists every job: one shared store


def test_streams_pass_through_the_ingress(cluster):
    import websockets

    page = httpx.get(f"{cluster.url}/", timeout=30)  # the playground, served by a replica
    assert page.status_code == 200 and "Helios playground" in page.text
    video_id = create(cluster, seed=21)
    with httpx.stream("GET", f"{cluster.api}/videos/{video_id}/events", timeout=120) as events:
        kinds = [json.loads(line[5:]).get("type", line) if line.startswith("data:") else None
                 for line in events.iter_lines()]
    assert "completed" in str(kinds)
    playlist = httpx.get(f"{cluster.api}/videos/{video_id}/stream.m3u8", timeout=30)
    assert playlist.status_code == 200 and "#EXT-X-ENDLIST" in playlist.text

    async def realtime() -> tuple[list[str], int]:
        url = cluster.url.replace("http", "ws") + "/v1/realtime/video"
        seen, received = [], 0
        async with websockets.connect(url, max_size=None) as socket:
            await socket.send(json.dumps({"type": "session.start", "format": "m4s", "prompt": "a heron",
                                          "num_frames": 66, "width": 128, "height": 64, "seed": 3}))
            async for message in socket:
                if isinstance(message, bytes):
                    received += len(message)
                    continue
                seen.append(json.loads(message)["type"])
                if seen[-1] in ("session.done", "error"):
                    return seen, received
        return seen, received

    seen, received = asyncio.run(realtime())
    assert seen[0] == "video.start" and seen[-1] == "session.done", seen
    assert seen.count("video.chunk_metadata") == 2 and received > 0


def test_cancel_reaches_the_owning_replica(cluster):
    video_id = create(cluster, num_frames=660, size="192x128", seed=8)
    assert httpx.delete(f"{cluster.api}/videos/{video_id}", timeout=60).status_code == 200
    assert httpx.get(f"{cluster.api}/videos/{video_id}", timeout=30).status_code == 404
    deadline = time.monotonic() + 30  # the owner's engine lets the request go at its next step
    while 'helios:num_requests_running{model_name="helios-tiny"} 0.0' not in httpx.get(f"{cluster.url}/metrics",
                                                                                     timeout=30).text:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_metrics_and_readiness_cover_every_replica(cluster):
    docs = httpx.get(f"{cluster.url}/docs", timeout=30)  # a replica's self-contained docs, not the ingress's
    assert docs.status_code == 200 and "/static/" in docs.text and "cdn" not in docs.text.lower()
    schema = httpx.get(f"{cluster.url}/openapi.json", timeout=30).json()
    assert "/v1/videos/{video_id}" in schema["paths"]
    ready = httpx.get(f"{cluster.url}/ready", timeout=30)
    assert ready.status_code == 200 and set(ready.json()["replicas"]) == {"replica-0", "replica-1"}
    metrics = httpx.get(f"{cluster.url}/metrics", timeout=30).text
    for slot in ("replica-0", "replica-1"):
        assert f'replica="{slot}"' in metrics
    assert 'helios:replicas_ready{model_name="helios-tiny"} 2.0' in metrics
    assert 'helios:replicas{model_name="helios-tiny"} 2.0' in metrics
    assert '\nhelios:num_requests_waiting{model_name="helios-tiny"} ' in metrics  # the total, without a replica label


def test_the_ingress_guards_itself_as_a_single_server_does(cluster):
    """Host, Origin (the WebSocket's too) and the body limit are checked at the endpoint, before
    anything is buffered or forwarded: a replica never sees the refused requests."""
    import websockets

    rebound = httpx.get(f"{cluster.url}/ready", headers={"host": "attacker.example"}, timeout=30)
    assert rebound.status_code == 400 and rebound.json()["error"]["code"] == "invalid_host"
    page = httpx.post(f"{cluster.api}/videos", content=b"prompt=a fox", timeout=30,
                      headers={"content-type": "text/plain", "origin": "http://attacker.example"})
    assert page.status_code == 403 and page.json()["error"]["code"] == "origin_not_allowed"

    async def open_from(origin: str) -> str:
        url = cluster.url.replace("http", "ws") + "/v1/realtime/video"
        try:
            async with websockets.connect(url, additional_headers={"origin": origin}) as socket:
                await socket.send(json.dumps({"type": "nonsense"}))
                return json.loads(await socket.recv())["type"]
        except websockets.InvalidStatus as refused:
            return f"refused {refused.response.status_code}"
        except websockets.ConnectionClosed as closed:
            return f"closed {closed.rcvd.code if closed.rcvd else None}"

    assert asyncio.run(open_from("http://attacker.example")) in ("refused 403", "closed 1008")
    assert asyncio.run(open_from(cluster.url)) == "error"  # the server's own page: the session answers

    def oversized():  # chunked, so only counting what arrives can stop it
        for _ in range(65):
            yield b"x" * 2**20

    too_large = httpx.post(f"{cluster.api}/videos", content=oversized(), timeout=60,
                           headers={"content-type": "application/json"})
    assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "payload_too_large"
    metrics = httpx.get(f"{cluster.url}/metrics", timeout=30).text
    assert 'status="413"' not in metrics and 'status="403"' not in metrics  # refused at the ingress


def test_killing_a_replica_mid_job_loses_no_job(cluster):
    long = {"num_frames": 660, "size": "192x128", "seed": 77, "prompt": "a long walk"}
    first, twin = create(cluster, **long), create(cluster, **long)  # one per replica, identical work
    deadline = time.monotonic() + 60
    while min(httpx.get(f"{cluster.api}/videos/{i}", timeout=30).json()["chunks_completed"] for i in (first, twin)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    victim = owners(cluster)[first]
    assert owners(cluster)[twin] != victim, owners(cluster)
    (actor,) = replica_processes(victim)
    done_before = httpx.get(f"{cluster.api}/videos/{first}", timeout=30).json()["chunks_completed"]
    actor.kill()
    # The endpoint keeps answering, and new work goes to the replica that lives.
    assert httpx.get(f"{cluster.api}/videos/{twin}", timeout=30).status_code == 200
    during = create(cluster, seed=5)
    for video_id in (first, twin, during):
        job = wait_completed(cluster, video_id, timeout=300)
        assert job["status"] == "completed"
    assert owners(cluster)[first] != victim  # resumed on the other replica
    assert done_before < 20  # it really was interrupted mid-video (20 chunks in all)
    videos = [read_video_bytes(cluster, i) for i in (first, twin)]
    assert np.array_equal(videos[0], videos[1])  # resumed from its last chunk, as if never interrupted
    deadline = time.monotonic() + 120
    while httpx.get(f"{cluster.url}/ready", timeout=30).status_code != 200:  # Ray Serve restarted it
        assert time.monotonic() < deadline
        time.sleep(0.5)


def read_video_bytes(cluster, video_id: str) -> np.ndarray:
    path = cluster.data_dir.parent / f"{video_id}.mp4"
    path.write_bytes(httpx.get(f"{cluster.api}/videos/{video_id}/content", timeout=60).content)
    return read_video(path)
