"""The OpenAI-style API against a live server, through the official openai SDK and plain HTTP."""

from __future__ import annotations

import base64
import io
import json
import time

import av
import httpx
import numpy as np
import pytest
from PIL import Image

SMALL = {"size": "128x64"}


def decode_mp4(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def multipart(fields: dict) -> dict:
    """Form fields as multipart/form-data (httpx's ``data=`` alone sends form-urlencoded, refused with 415)."""
    return {name: (None, value) for name, value in fields.items()}


def wait_for(client, video_id: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        video = client.videos.retrieve(video_id)
        if video.status in ("completed", "failed"):
            return video
        time.sleep(0.1)
    raise AssertionError(f"{video_id} did not finish")


def test_sdk_create_retrieve_download(openai_client):
    video = openai_client.videos.create(prompt="a red fox in the snow", seconds="2", size="128x64",
                                        extra_body={"seed": 4})
    assert video.status in ("queued", "in_progress") and video.id.startswith("video_")
    done = wait_for(openai_client, video.id)
    assert done.status == "completed" and done.progress == 100
    frames = decode_mp4(openai_client.videos.download_content(video.id).read())
    assert frames.shape == (65, 64, 128, 3)  # 2 s at 24 fps = 48 frames -> 2 whole chunks -> 4n+1 = 65
    thumbnail = openai_client.videos.download_content(video.id, variant="thumbnail").read()
    assert thumbnail[:4] == b"RIFF" and thumbnail[8:12] == b"WEBP"
    extra = done.model_extra or {}
    assert extra["chunks_completed"] == extra["total_chunks"] == 2 and extra["time_to_first_chunk_s"] > 0


def test_sdk_create_and_poll_and_delete(openai_client):
    video = openai_client.videos.create_and_poll(prompt="a lantern", size="128x64", extra_body={"num_frames": 33},
                                                 poll_interval_ms=100)
    assert video.status == "completed"
    deleted = openai_client.videos.delete(video.id)
    assert deleted.deleted and deleted.id == video.id
    from openai import NotFoundError

    with pytest.raises(NotFoundError):
        openai_client.videos.retrieve(video.id)


def test_sdk_list_pagination(openai_client):
    ids = [openai_client.videos.create(prompt=f"clip {i}", size="128x64", extra_body={"num_frames": 1}).id
           for i in range(3)]
    first = openai_client.videos.list(limit=2, order="desc")
    assert [v.id for v in first.data] == ids[::-1][:2] and first.has_more
    second = openai_client.videos.list(limit=2, order="desc", after=first.data[-1].id)
    assert second.data[0].id == ids[0]
    ascending = [v.id for v in openai_client.videos.list(limit=100, order="asc").data]
    assert ascending.index(ids[0]) < ascending.index(ids[1]) < ascending.index(ids[2])
    for video_id in ids:
        wait_for(openai_client, video_id)


def test_progress_moves_while_running(openai_client):
    video = openai_client.videos.create(prompt="slow", size="320x192", extra_body={"num_frames": 132})
    seen = set()
    while (current := openai_client.videos.retrieve(video.id)).status != "completed":
        seen.add(current.progress)
        time.sleep(0.02)
    assert len([p for p in seen if 0 < p < 100]) >= 3, seen


def test_delete_cancels_a_running_job(openai_client, server):
    video = openai_client.videos.create(prompt="long", size="320x192", extra_body={"num_frames": 990})
    while openai_client.videos.retrieve(video.id).status != "in_progress":
        time.sleep(0.02)
    openai_client.videos.delete(video.id)
    time.sleep(0.3)  # the engine frees the slot at its next step
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'helios:num_requests_running{model_name="helios-tiny"} 0.0' in metrics
    assert not (server.data_dir / "videos" / video.id).exists()


def test_json_body_and_sync_endpoint(server):
    created = httpx.post(f"{server.api}/videos", json={"prompt": "json body", "num_frames": 1, **SMALL, "seed": 9})
    assert created.status_code == 200 and created.json()["status"] in ("queued", "in_progress")
    response = httpx.post(f"{server.api}/videos/sync", files=multipart({"prompt": "sync", "num_frames": "33", **SMALL}),
                          timeout=60)
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    assert decode_mp4(response.content).shape == (33, 64, 128, 3)


def test_same_seed_same_video(server):
    def sync(seed):
        body = {"prompt": "determinism", "num_frames": "40", "seed": str(seed), **SMALL}
        return decode_mp4(httpx.post(f"{server.api}/videos/sync", files=multipart(body), timeout=60).content)

    a, b, c = sync(1), sync(1), sync(2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def png_bytes(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    return png.getvalue()


def test_multipart_prompt_schedule_is_json_text(server):
    schedule = [{"from_chunk": 0, "prompt": "a fox", "transition_chunks": 0},
                {"from_chunk": 1, "prompt": "a deer", "transition_chunks": 1}]
    form = {"prompt": "a fox", "num_frames": "66", **SMALL, "prompt_schedule": json.dumps(schedule)}
    created = httpx.post(f"{server.api}/videos", files=multipart(form))
    assert created.status_code == 200, created.text
    assert httpx.get(f"{server.api}/videos/{created.json()['id']}").json()["prompt_schedule"] == schedule
    for text, status, says in (("[{not json", 422, "not valid JSON"), ("[" * 100 + "]" * 100, 400, "nested")):
        refused = httpx.post(f"{server.api}/videos", files=multipart({**form, "prompt_schedule": text}))
        assert refused.status_code == status and refused.json()["error"]["param"] == "prompt_schedule", refused.text
        assert says in refused.json()["error"]["message"]


def test_multipart_input_reference_as_a_data_url_is_the_upload(server):
    """As text, an image is read as a JSON body's would be, the same answer as the file's: helios-tiny
    (no VAE) refuses image inputs, a refusal that shows the image reached the model."""
    def create(reference) -> httpx.Response:
        """``reference``: the input_reference part, a file (name, bytes, type) or text."""
        form = multipart({"prompt": "from a picture", "num_frames": "33", **SMALL})
        form["input_reference"] = reference if isinstance(reference, tuple) else (None, reference)
        return httpx.post(f"{server.api}/videos", files=form)

    png = png_bytes(1)
    from_file = create(("start.png", png, "image/png"))
    assert from_file.status_code == 422 and "VAE" in from_file.json()["error"]["message"], from_file.text
    for text in ("data:image/png;base64," + base64.b64encode(png).decode(), base64.b64encode(png).decode()):
        from_text = create(text)
        assert (from_text.status_code, from_text.json()) == (from_file.status_code, from_file.json()), from_text.text


@pytest.mark.parametrize("field", ["input_reference", "video_reference"])
def test_multipart_reference_text_must_be_base64(server, field):
    form = multipart({"prompt": "x", "num_frames": "33", **SMALL, field: "https://example.com/x.png"})
    refused = httpx.post(f"{server.api}/videos", files=form)
    assert refused.status_code == 422 and refused.json()["error"]["param"] == field, refused.text
    assert "file upload or a base64 data URL" in refused.json()["error"]["message"]
    text = "data:image/png;base64," + base64.b64encode(png_bytes(1)).decode()
    both = httpx.post(f"{server.api}/videos", files=[*multipart({"prompt": "x", field: text}).items(),
                                                      (field, ("x.png", png_bytes(1), "image/png"))])
    assert both.status_code == 422 and both.json()["error"]["param"] == field, both.text


def test_models_health_ready_metrics(server):
    assert httpx.get(f"{server.api}/models").json()["data"][0]["id"] == "helios-tiny"
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/ready")
    assert ready.status_code == 200 and ready.json()["warmup_seconds"] > 0
    metrics = httpx.get(f"{server.url}/metrics").text
    for name in ("helios:num_requests_waiting", "helios:num_requests_running", "helios:batch_rows_bucket",
                 "helios:step_seconds", "helios:chunk_seconds", "helios:time_to_first_chunk_seconds",
                 "helios:realtime_factor", 'helios:request_success_total{finished_reason="cancelled"',
                 'helios:request_success_total{finished_reason="failed"', "helios:frames_generated_total",
                 "helios:model_flops_per_second", "helios:model_flops_utilization"):
        assert name in metrics, name
    tiny = '{model_name="helios-tiny"}'
    values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines() if line.startswith("helios:")}
    assert values[f"helios:model_flops_total{tiny}"] > 0  # the warm-up ran forwards
    assert values[f"helios:device_peak_flops{tiny}"] > 1e9  # measured on this CPU
    # The attention kernel auto picked on a CPU is PyTorch's dispatch, said in both places.
    assert ready.json()["attention_backend"] == "sdpa"
    assert values['helios:attention_backend_info{backend="sdpa",model_name="helios-tiny"}'] == 1


def test_jobs_without_a_seed_get_their_own(server):
    a, b = (httpx.post(f"{server.api}/videos", json={"prompt": "same prompt", "num_frames": 1, **SMALL}).json()
            for _ in range(2))
    assert a["seed"] != b["seed"]
    given = httpx.post(f"{server.api}/videos", json={"prompt": "p", "num_frames": 1, "seed": 42, **SMALL}).json()
    assert given["seed"] == 42


def test_achieved_flops_are_averaged_over_a_window_that_stays_bounded():
    from types import SimpleNamespace

    from helios_serve.entrypoints.openai.metrics import FLOPS_WINDOW_S, ServerMetrics

    now = [100.0]
    metrics = ServerMetrics("helios-tiny", clock=lambda: now[0])
    metrics.set_device_peak(4e9)
    for step in range(1000):  # one forward of 1 GFLOP every 0.1 s, nobody scraping
        now[0] = 100.0 + 0.1 * step
        metrics.on_step(0.1, SimpleNamespace(num_rows=1, model_flops=10**9))
    assert len(metrics.recent_flops) <= FLOPS_WINDOW_S / 0.1 + 1  # old steps are dropped as new ones come
    assert metrics.achieved_flops_per_second() == pytest.approx(1e10, rel=0.02)  # 1 GFLOP per 0.1 s
    values = dict(line.split() for line in metrics.exposition(0, 0).decode().splitlines() if line.startswith("helios:"))
    utilization = values['helios:model_flops_utilization{model_name="helios-tiny"}']
    assert float(utilization) == pytest.approx(2.5, rel=0.02)  # 10 GFLOP/s over 4
    now[0] += 2 * FLOPS_WINDOW_S  # idle: the window empties
    assert metrics.achieved_flops_per_second() == 0
