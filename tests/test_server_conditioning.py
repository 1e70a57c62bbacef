"""Image- and video-to-video over HTTP, on a diffusers-format checkpoint with a VAE."""

from __future__ import annotations

import base64
import io
import time

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from helios_serve import HeliosEngine, VideoSamplingParams
from helios_serve.streaming.fmp4 import ChunkEncoder
from helios_serve.video_io import encode_mp4
from live_server import start_server

SIZE = 64
STEPS = [1, 1, 1]


def decode(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.fixture(scope="module")
def checkpoint_server(tiny_checkpoint, tmp_path_factory):
    _, folder = tiny_checkpoint("distilled")
    live = start_server(tmp_path_factory.mktemp("ckpt") / "data", str(folder))
    yield live, folder
    live.stop()


def wait_completed(server, video_id: str) -> dict:
    for _ in range(1200):
        job = httpx.get(f"{server.api}/videos/{video_id}").json()
        if job["status"] in ("completed", "failed"):
            assert job["status"] == "completed", job
            return job
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_image_to_video_upload_matches_the_engine(checkpoint_server):
    server, folder = checkpoint_server
    from openai import OpenAI

    client = OpenAI(base_url=server.api, api_key="unused", max_retries=0)
    image = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    video = client.videos.create(prompt="from a picture", size=f"{SIZE}x{SIZE}",
                                 input_reference=("start.png", png.getvalue(), "image/png"),
                                 extra_body={"num_frames": 33, "seed": 5, "pyramid_num_inference_steps_list": STEPS})
    wait_completed(server, video.id)
    served = decode(client.videos.download_content(video.id).read())
    params = VideoSamplingParams(num_frames=33, height=SIZE, width=SIZE, seed=5, image=image,
                                 pyramid_num_inference_steps_list=tuple(STEPS))
    (expected,) = HeliosEngine(model=str(folder), dtype="float32").generate("from a picture", params)
    # H.264 is lossy, but deterministic: the engine's frames through the same encoder give the
    # server's video exactly, so the server generated exactly the engine's frames.
    encoded = ChunkEncoder(24).encode(expected.frames, 0, 1)
    assert np.array_equal(served, decode(encoded.init + encoded.media))


def test_video_to_video_data_url(checkpoint_server):
    server, _ = checkpoint_server
    clip = np.random.default_rng(2).integers(0, 256, (40, SIZE, SIZE, 3), dtype=np.uint8)
    data_url = "data:video/mp4;base64," + base64.b64encode(encode_mp4(clip, 24)).decode()
    body = {"prompt": "continue", "size": f"{SIZE}x{SIZE}", "num_frames": 33, "video_reference": data_url,
            "pyramid_num_inference_steps_list": STEPS}
    job = httpx.post(f"{server.api}/videos", json=body).json()
    wait_completed(server, job["id"])
    assert decode(httpx.get(f"{server.api}/videos/{job['id']}/content").content).shape == (33, SIZE, SIZE, 3)
    short = "data:video/mp4;base64," + base64.b64encode(encode_mp4(clip[:10], 24)).decode()
    response = httpx.post(f"{server.api}/videos", json={**body, "video_reference": short})
    assert response.status_code == 422 and "33 frames" in response.json()["error"]["message"]
