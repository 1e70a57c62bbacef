"""vLLM-Omni serving our Helios executor, for real: `vllm-omni serve <checkpoint> --omni` on CPU.

Runs in the vLLM-Omni environment (.ci/engine-tests vllm_omni). The server is started with
step execution and continuous batching, so requests that arrive at different times share
transformer forwards at different timesteps; every video must still equal, frame for
frame, what our own engine makes for the same request and seed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
from hf_cache import checkpoint_files, lay_out_cache
from live_server import free_port, start_process

from helios_serve.model_executor.checkpoint import MODEL_ALIASES

# vLLM-Omni's default H.264 settings for /v1/videos responses (serving_video.py).
SERVER_CODEC_OPTIONS = {"preset": "ultrafast", "threads": "0"}
FPS = 24


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("omni") / "helios-distilled-tiny")


def serve(model: str, folder, *flags: str, env: dict[str, str] | None = None):
    """`vllm-omni serve <model> --omni` on CPU; ``env`` adds to or overrides its environment."""
    port = free_port()
    env = {**os.environ, "HELIOS_OMNI_CPU": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    command = [console_script("vllm-omni"), "serve", model, "--omni", "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "float32", "--step-execution", "--max-num-seqs", "4", *flags]
    started = time.monotonic()
    server = start_process(command, f"http://127.0.0.1:{port}", "/health", folder / "server.log", timeout=300,
                           env=env, cwd=folder)
    print(f"vllm-omni serve {' '.join(flags)} ready in {time.monotonic() - started:.1f} s")
    return server


@pytest.fixture(scope="module")
def omni(tmp_path_factory, checkpoint):
    server = serve(checkpoint, tmp_path_factory.mktemp("omni-serve"))
    yield server, checkpoint
    server.stop()


@pytest.fixture(scope="module")
def streaming_omni(tmp_path_factory, checkpoint):
    """A server whose every chunk is its own output (the realtime WebSocket's mode)."""
    server = serve(checkpoint, tmp_path_factory.mktemp("omni-streaming"), "--diffusion-streaming-output")
    yield server
    server.stop()


def realtime_session(server, start: dict, on_chunk=None) -> tuple[list[dict], list[dict], bytes]:
    """One WebSocket session: (chunk metadata, every JSON event, the fMP4 bytes). ``on_chunk(index)``
    may return a message to send after a chunk's metadata arrives."""
    import asyncio

    import websockets

    async def receive() -> tuple[list[dict], list[dict], bytes]:
        metadata, events, fragments = [], [], b""
        async with websockets.connect(server.url.replace("http", "ws") + "/v1/realtime/video") as socket:
            await socket.send(json.dumps(start))
            while True:
                message = await asyncio.wait_for(socket.recv(), timeout=120)
                if isinstance(message, bytes):
                    fragments += message
                    continue
                event = json.loads(message)
                events.append(event)
                assert event["type"] != "error", event
                if event["type"] == "video.chunk_metadata" and event["generation_chunk_index"] is not None:
                    metadata.append(event)
                    reply = on_chunk(event["generation_chunk_index"]) if on_chunk else None
                    if reply is not None:
                        await socket.send(json.dumps(reply))
                if event["type"] == "session.done":
                    return metadata, events, fragments

    return asyncio.run(receive())


def server_encoding(frames: np.ndarray) -> np.ndarray:
    """Our frames through vLLM-Omni's own MP4 encoder with its server defaults, decoded."""
    from vllm_omni.entrypoints.openai.video_api_utils import encode_video_base64

    return decode_mp4(base64.b64decode(encode_video_base64(frames, fps=FPS, video_codec_options=SERVER_CODEC_OPTIONS)))


def test_our_pipeline_is_registered_for_both_helios_names(omni):
    server, _ = omni
    log = server.log()
    for architecture in ("HeliosPipeline", "HeliosPyramidPipeline"):
        assert f"Registered diffusion model {architecture} -> helios_serve.integrations.vllm_omni.pipeline" in log
    assert "OmniPlatform plugin helios_serve_cpu is activated" in log


def test_sync_video_equals_our_engine(omni):
    server, checkpoint = omni
    fields = dict(prompt="a red fox in the snow", num_frames=66, seed=7, **SIZE)
    response = httpx.post(f"{server.api}/videos/sync", data=fields, timeout=300)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "video/mp4"
    served = decode_mp4(response.content)
    assert served.shape == (65, 64, 64, 3)  # 2 chunks, the last trimmed to 4n+1 frames
    ours, other_seed = engine_frames(checkpoint, [(fields["prompt"], dict(num_frames=66, seed=7, **SIZE)),
                                                  (fields["prompt"], dict(num_frames=66, seed=8, **SIZE))])
    assert np.array_equal(served, server_encoding(ours))
    assert mean_difference(served, server_encoding(other_seed)) > 5  # the check can fail


def test_a_released_repo_id_is_served_from_the_hugging_face_cache_offline(checkpoint, tmp_path):
    """What the README tells vLLM-Omni users to type: the repo id, not our alias. vLLM-Omni resolves
    it itself (omni_snapshot_download, before our plugin loads) in huggingface_hub's default cache,
    which HF_HUB_CACHE names; HF_HUB_OFFLINE=1 keeps it from the hub."""
    repo_id = MODEL_ALIASES["helios-distilled"]
    cache = tmp_path / "hub"
    lay_out_cache(cache, repo_id, checkpoint_files(Path(checkpoint)), hashlib.sha1(b"main").hexdigest(), refs=("main",))
    server = serve(repo_id, tmp_path, env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    try:
        assert [model["id"] for model in httpx.get(f"{server.api}/models", timeout=30).json()["data"]] == [repo_id]
        fields = dict(prompt="a red fox in the snow", num_frames=33, seed=7, **SIZE)
        response = httpx.post(f"{server.api}/videos/sync", data=fields, timeout=300)
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "video/mp4"
    (ours,) = engine_frames(checkpoint, [(fields["prompt"], dict(num_frames=33, seed=7, **SIZE))])
    assert np.array_equal(decode_mp4(response.content), server_encoding(ours))


def test_helios_fields_in_extra_params_reach_our_executor(omni):
    server, checkpoint = omni
    extras = dict(pyramid_num_inference_steps_list=[1, 1, 1], is_amplify_first_chunk=False)
    fields = dict(prompt="a paper boat", num_frames=33, seed=5, extra_params=json.dumps(extras), **SIZE)
    response = httpx.post(f"{server.api}/videos/sync", data=fields, timeout=300)
    assert response.status_code == 200, response.text
    (ours,) = engine_frames(checkpoint, [("a paper boat", dict(num_frames=33, seed=5, **SIZE, **extras))])
    assert np.array_equal(decode_mp4(response.content), server_encoding(ours))


def test_image_to_video_from_an_upload(omni, tmp_path):
    from PIL import Image

    server, checkpoint = omni
    image = make_image(tmp_path / "first-frame.png")
    fields = dict(prompt="the scene comes alive", num_frames=33, seed=11, **SIZE)
    with open(image, "rb") as upload:
        response = httpx.post(f"{server.api}/videos/sync", data=fields, files={"input_reference": upload}, timeout=300)
    assert response.status_code == 200, response.text
    (ours,) = engine_frames(checkpoint, [(fields["prompt"], dict(num_frames=33, seed=11, image=Image.open(image), **SIZE))])
    assert np.array_equal(decode_mp4(response.content), server_encoding(ours))


def test_concurrent_jobs_share_forwards_at_different_timesteps(omni):
    server, checkpoint = omni
    # With CFG (two rows per request). vLLM-Omni batches only requests with equal sampling
    # settings (its batch key), so they differ in prompts, negative prompts and seeds. Requests
    # can share a forward only within a pyramid stage (its latents have one size), so the
    # stages get 8 steps: requests a few steps apart then share most of their forwards.
    steps = [8, 8, 8]
    cfg = dict(num_frames=99, guidance_scale=3.0, pyramid_num_inference_steps_list=steps)
    jobs = [
        ("a lighthouse at night", dict(seed=1, negative_prompt="blurry", **cfg)),
        ("a kite over a beach", dict(seed=2, negative_prompt="dark", **cfg)),
        ("a tram in the rain", dict(seed=3, **cfg)),
    ]

    def run(index: int) -> bytes:
        time.sleep(0.1 * index)  # staggered arrivals: the requests are at different steps
        prompt, fields = jobs[index]
        form = {"prompt": prompt, **SIZE, **{k: v for k, v in fields.items() if k != "pyramid_num_inference_steps_list"},
                "extra_params": json.dumps({"pyramid_num_inference_steps_list": steps})}
        created = httpx.post(f"{server.api}/videos", data=form, timeout=60)
        assert created.status_code == 200, created.text
        video_id = created.json()["id"]
        deadline = time.monotonic() + 300
        while (job := httpx.get(f"{server.api}/videos/{video_id}", timeout=30).json())["status"] != "completed":
            assert job["status"] in ("queued", "in_progress"), job
            assert time.monotonic() < deadline
            time.sleep(0.2)
        content = httpx.get(f"{server.api}/videos/{video_id}/content", timeout=60)
        assert content.status_code == 200
        return content.content

    with ThreadPoolExecutor(len(jobs)) as pool:
        videos = list(pool.map(run, range(len(jobs))))
    expected = engine_frames(checkpoint, [(p, {**f, **SIZE}) for p, f in jobs])
    for served, ours in zip(videos, expected):
        assert np.array_equal(decode_mp4(served), server_encoding(ours))
    shared = [int(n) for n in re.findall(r"shared forwards with up to (\d+) requests at different timesteps", server.log())]
    assert shared and max(shared) >= 2, "no two requests shared a forward"


@pytest.mark.parametrize("field, value, message", [
    ("height", 50, "height must be a positive multiple of 64"),
    ("extra_params", '{"pyramid_num_inference_steps_list": [1, 1]}', "pyramid_num_inference_steps_list needs 3"),
    ("seed", -1, "seed must be from 0"),
])
def test_bad_fields_are_client_errors(omni, field, value, message):
    server, _ = omni
    fields = {"prompt": "a red fox", "num_frames": 33, "seed": 1, **SIZE, field: value}
    response = httpx.post(f"{server.api}/videos/sync", data=fields, timeout=60)
    assert response.status_code == 400, response.text
    assert message in response.text


def test_realtime_websocket_streams_each_chunk_as_it_is_made(streaming_omni, checkpoint):
    """With --diffusion-streaming-output every chunk is its own output: one fMP4 fragment each."""
    from vllm_omni.entrypoints.openai.video_api_utils import create_streaming_video_encoder

    from helios_serve.model_executor.step_io import chunk_frame_counts

    codec = {"preset": "ultrafast", "threads": "1", "tune": "zerolatency"}
    start = {"type": "session.start", "format": "m4s", "prompt": "a heron taking off", "num_frames": 99, "seed": 4,
             "fps": FPS, "extra_params": {"video_codec_options": codec}, **SIZE}
    metadata, _, fragments = realtime_session(streaming_omni, start)
    # One fragment per generated chunk (the closing fragment carries no chunk index).
    assert [m["generation_chunk_index"] for m in metadata] == [0, 1, 2]
    (ours,) = engine_frames(checkpoint, [(start["prompt"], dict(num_frames=99, seed=4, **SIZE))])
    encoder = create_streaming_video_encoder(output_format="m4s", fps=FPS, video_codec_options=codec)
    expected, offset = b"", 0
    for count in chunk_frame_counts(99):
        expected += encoder.encode(ours[offset : offset + count])
        offset += count
    expected += encoder.close()
    assert np.array_equal(decode_mp4(fragments), decode_mp4(expected))


def test_realtime_prompt_interaction_switches_the_prompt_mid_stream(streaming_omni, checkpoint):
    """vLLM-Omni's own interaction path: a WS `session.interaction` with a new prompt reaches our
    pipeline through its PromptInteractionHandler at the next chunk boundary. The chunks before
    the switch equal the uninterrupted video; from the switch on, the video is exactly what our
    engine makes with that prompt switch scheduled at the same chunk."""
    from vllm_omni.entrypoints.openai.video_api_utils import create_streaming_video_encoder

    from helios_serve import HeliosEngine, VideoSamplingParams
    from helios_serve.model_executor.step_io import FRAMES_PER_CHUNK, PromptSwitch, chunk_frame_counts

    codec = {"preset": "ultrafast", "threads": "1", "tune": "zerolatency"}
    prompt, new_prompt, num_frames = "a heron taking off", "a submarine in deep water", 5 * FRAMES_PER_CHUNK
    start = {"type": "session.start", "format": "m4s", "prompt": prompt, "num_frames": num_frames, "seed": 4,
             "fps": FPS, "extra_params": {"video_codec_options": codec}, **SIZE}
    interaction = {"type": "session.interaction",
                   "interaction": {"event_id": "switch-1", "event": {"prompt": new_prompt}, "transition_chunks": 0}}
    # Mid-stream: sent once the first chunk is out.
    metadata, events, fragments = realtime_session(streaming_omni, start, lambda k: interaction if k == 0 else None)
    queued = [e for e in events if e["type"] == "session.interaction.queued"]
    assert [e["event_id"] for e in queued] == ["switch-1"]
    assert [m["generation_chunk_index"] for m in metadata] == [0, 1, 2, 3, 4]
    # The first chunk made under the new prompt carries the event's id in its metadata.
    started = [m["generation_chunk_index"] for m in metadata if "switch-1" in m["started_event_ids"]]
    assert len(started) == 1 and 1 <= started[0] <= 4, metadata
    switch = started[0]

    schedule = (PromptSwitch(0, prompt), PromptSwitch(switch, new_prompt))
    plain, switched = (video.frames for video in HeliosEngine(model=checkpoint).generate(
        [prompt, prompt], [VideoSamplingParams(num_frames=num_frames, seed=4, **SIZE),
                           VideoSamplingParams(num_frames=num_frames, seed=4, prompt_schedule=schedule, **SIZE)]))

    def streamed(frames: np.ndarray) -> np.ndarray:
        encoder = create_streaming_video_encoder(output_format="m4s", fps=FPS, video_codec_options=codec)
        expected, offset = b"", 0
        for count in chunk_frame_counts(num_frames):
            expected += encoder.encode(frames[offset : offset + count])
            offset += count
        return decode_mp4(expected + encoder.close())

    served, before = decode_mp4(fragments), switch * FRAMES_PER_CHUNK
    assert np.array_equal(served, streamed(switched))
    uninterrupted = streamed(plain)
    assert np.array_equal(served[:before], uninterrupted[:before])
    assert mean_difference(served[before:], uninterrupted[before:]) > 5
    assert "switch-1" in [e for m in metadata for e in m["completed_event_ids"]]


def test_serving_benchmark_runs_against_vllm_omni(omni, tmp_path):
    server, _ = omni
    record = run_serving_benchmark(server.url, "vllm-omni", tmp_path)
    assert record["metrics"]["completed"] == 3 and record["metrics"]["failed"] == 0
    assert record["metrics"]["frames"] == 3 * 33 and not record["config"]["streamed"]
