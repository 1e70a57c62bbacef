"""Durable jobs: kill the server mid-job, start it again, and the video finishes exactly as if never stopped."""

from __future__ import annotations

import io
import time

import av
import httpx
import numpy as np

from live_server import start_server

JOB = {"prompt": "a lighthouse at night", "num_frames": 330, "size": "320x192", "seed": 11}


def decode(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def wait(server, video_id: str, condition, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{server.api}/videos/{video_id}").json()
        if condition(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting on {video_id}: {job}")


def test_crash_mid_job_then_resume(tmp_path):
    data_dir = tmp_path / "data"
    first = start_server(data_dir)
    try:
        done_before = httpx.post(f"{first.api}/videos/sync", json={**JOB, "num_frames": 33, "seed": 1}, timeout=60)
        kept = httpx.get(f"{first.api}/videos", params={"limit": 1}).json()["data"][0]["id"]
        job = httpx.post(f"{first.api}/videos", json=JOB).json()
        progress = wait(first, job["id"], lambda j: j["chunks_completed"] >= 3)
    finally:
        first.stop(crash=True)  # SIGKILL: no shutdown code runs
    assert progress["chunks_completed"] < 10 and progress["status"] == "in_progress"

    second = start_server(data_dir)
    try:
        resumed_at = httpx.get(f"{second.api}/videos/{job['id']}").json()
        assert resumed_at["chunks_completed"] >= 3  # continues, does not start over
        finished = wait(second, job["id"], lambda j: j["status"] in ("completed", "failed"))
        assert finished["status"] == "completed", finished
        resumed = decode(httpx.get(f"{second.api}/videos/{job['id']}/content").content)
        reference = decode(httpx.post(f"{second.api}/videos/sync", json=JOB, timeout=180).content)
        assert resumed.shape == reference.shape == (329, 192, 320, 3)
        assert np.array_equal(resumed, reference)
        # a video completed before the crash is still there
        survived = httpx.get(f"{second.api}/videos/{kept}/content")
        assert survived.status_code == 200 and survived.content == done_before.content
    finally:
        second.stop()
