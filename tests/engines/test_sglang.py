"""SGLang Diffusion serving our Helios executor, for real: `sglang serve` and `sglang generate` on CPU.

Runs in the SGLang environment (.ci/engine-tests sglang). Every video must equal, frame for
frame, what our own engine makes for the same request and seed, after SGLang's own MP4 writer.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import httpx
import numpy as np
import pytest
from engine_checks import (
    SIZE,
    console_script,
    decode_mp4,
    engine_frames,
    make_image,
    mean_difference,
    run_serving_benchmark,
    save_tiny_checkpoint,
)
from live_server import free_port, start_process

FPS = 24


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("sglang") / "tiny-checkpoint")


@pytest.fixture(scope="module")
def sglang(tmp_path_factory, checkpoint):
    workdir = tmp_path_factory.mktemp("sglang-serve")  # SGLang writes its videos under ./outputs
    port = free_port()
    command = [console_script("sglang"), "serve", "--model-path", checkpoint, "--host", "127.0.0.1", "--port", str(port),
               "--warmup-mode", "off"]  # its warm-up works, but costs ~16 s of CPU at 640x384
    started = time.monotonic()
    server = start_process(command, f"http://127.0.0.1:{port}", "/health", workdir / "server.log", timeout=300,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=workdir)
    print(f"sglang serve ready in {time.monotonic() - started:.1f} s")
    yield server
    server.stop()


def sglang_encoding(frames: np.ndarray, folder) -> np.ndarray:
    """Our frames through SGLang's own video writer (the one its server uses), decoded."""
    from sglang.multimodal_gen.configs.sample.sampling_params import DataType
    from sglang.multimodal_gen.runtime.entrypoints.utils import post_process_sample

    path = folder / f"ours-{time.monotonic_ns()}.mp4"
    post_process_sample(frames, DataType.VIDEO, fps=FPS, save_file_path=str(path))
    return decode_mp4(path.read_bytes())


def wait_for(server, video_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while (job := httpx.get(f"{server.api}/videos/{video_id}", timeout=30).json())["status"] in ("queued", "in_progress"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def test_our_pipeline_serves_the_checkpoint(sglang):
    assert "Using pipeline from model_index.json: HeliosServePyramidPipeline" in sglang.log()


def test_json_job_equals_our_engine(sglang, checkpoint, tmp_path):
    request = {"prompt": "a red fox in the snow", "size": "64x64", "num_frames": 66, "seed": 7}
    created = httpx.post(f"{sglang.api}/videos", json=request, timeout=60)
    assert created.status_code == 200, created.text
    job = wait_for(sglang, created.json()["id"])
    assert job["status"] == "completed", job
    content = httpx.get(f"{sglang.api}/videos/{job['id']}/content", timeout=60)
    assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    served = decode_mp4(content.content)
    assert served.shape == (65, 64, 64, 3)
    ours, other_seed = engine_frames(checkpoint, [(request["prompt"], dict(num_frames=66, seed=7, **SIZE)),
                                                  (request["prompt"], dict(num_frames=66, seed=8, **SIZE))])
    assert np.array_equal(served, sglang_encoding(ours, tmp_path))
    assert mean_difference(served, sglang_encoding(other_seed, tmp_path)) > 5  # the check can fail


def test_multipart_job_with_helios_fields_equals_our_engine(sglang, checkpoint, tmp_path):
    extras = dict(pyramid_num_inference_steps_list=[1, 1, 1], is_amplify_first_chunk=False)
    form = {"prompt": "a paper boat", "size": "64x64", "num_frames": "33", "seed": "5",
            "guidance_scale": "2.5", "negative_prompt": "blurry", "diffusers_kwargs": json.dumps(extras)}
    multipart = {name: (None, value) for name, value in form.items()}  # fields only, no upload
    created = httpx.post(f"{sglang.api}/videos", files=multipart, timeout=60)
    assert created.status_code == 200, created.text
    job = wait_for(sglang, created.json()["id"])
    assert job["status"] == "completed", job
    served = decode_mp4(httpx.get(f"{sglang.api}/videos/{job['id']}/content", timeout=60).content)
    fields = dict(num_frames=33, seed=5, guidance_scale=2.5, negative_prompt="blurry", **SIZE, **extras)
    (ours,) = engine_frames(checkpoint, [("a paper boat", fields)])
    assert np.array_equal(served, sglang_encoding(ours, tmp_path))


def test_image_to_video_from_an_upload(sglang, checkpoint, tmp_path):
    from PIL import Image

    image = make_image(tmp_path / "first-frame.png")
    form = {"prompt": (None, "the scene comes alive"), "size": (None, "64x64"), "num_frames": (None, "33"),
            "seed": (None, "11")}
    with open(image, "rb") as upload:
        created = httpx.post(f"{sglang.api}/videos", files={**form, "input_reference": upload}, timeout=60)
    assert created.status_code == 200, created.text
    job = wait_for(sglang, created.json()["id"])
    assert job["status"] == "completed", job
    served = decode_mp4(httpx.get(f"{sglang.api}/videos/{job['id']}/content", timeout=60).content)
    fields = dict(num_frames=33, seed=11, image=Image.open(image), **SIZE)
    (ours,) = engine_frames(checkpoint, [("the scene comes alive", fields)])
    assert np.array_equal(served, sglang_encoding(ours, tmp_path))


def test_a_bad_field_fails_the_job_with_a_clear_message(sglang):
    created = httpx.post(f"{sglang.api}/videos", json={"prompt": "a fox", "size": "80x64", "num_frames": 33}, timeout=60)
    if created.status_code == 200:  # SGLang queues first and validates in the worker
        job = wait_for(sglang, created.json()["id"])
        assert job["status"] == "failed"
        error = json.dumps(job["error"])
    else:
        assert 400 <= created.status_code < 500
        error = created.text
    assert "width must be a positive multiple of 64" in error


def test_sglang_generate_runs_our_executor(checkpoint, tmp_path):
    command = [console_script("sglang"), "generate", "--model-path", checkpoint, "--prompt", "a red fox in the snow",
               "--num-frames", "33", "--height", "64", "--width", "64", "--seed", "7",
               "--output-path", str(tmp_path / "out")]
    started = time.monotonic()
    # `sglang generate` resolves the model in its own process before it loads entry-point
    # plugins, so it needs the package named explicitly (`sglang serve` does not).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SGLANG_EXTERNAL_MODEL_PACKAGE": "helios_serve.integrations.sglang.external"}
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    print(f"sglang generate took {time.monotonic() - started:.1f} s")
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    (video,) = (tmp_path / "out").glob("*.mp4")
    served = decode_mp4(video.read_bytes())
    (ours,) = engine_frames(checkpoint, [("a red fox in the snow", dict(num_frames=33, seed=7, **SIZE))])
    assert np.array_equal(served, sglang_encoding(ours, tmp_path))


def test_serving_benchmark_runs_against_sglang(sglang, tmp_path):
    record = run_serving_benchmark(sglang.url, "sglang", tmp_path)
    assert record["metrics"]["completed"] == 3 and record["metrics"]["failed"] == 0
    assert record["metrics"]["frames"] == 3 * 33 and not record["config"]["streamed"]
