"""Extending a finished video (POST /v1/videos/{id}/extend): the new video is exactly the one
longer video whose prompt switches where the original ends, and extensions extend."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from live_server import start_server

SMALL = {"size": "128x64"}
P1, P2, P3 = "a lighthouse at night", "a storm rolls in", "dawn over calm water"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("extend") / "data")
    yield live
    live.stop()


def wait(server, video_id: str, timeout: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{server.api}/videos/{video_id}").json()
        if job["status"] in ("completed", "failed"):
            assert job["status"] == "completed", job
            return job
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting on {video_id}: {job}")


def frames(server, video_id: str, tmp_path) -> np.ndarray:
    from helios_serve.video_io import read_video

    path = tmp_path / f"{video_id}.mp4"
    path.write_bytes(httpx.get(f"{server.api}/videos/{video_id}/content").content)
    return read_video(path)


def create(server, **body) -> dict:
    answer = httpx.post(f"{server.api}/videos", json={**SMALL, "seed": 7, **body}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def extend(server, video_id: str, **body) -> httpx.Response:
    return httpx.post(f"{server.api}/videos/{video_id}/extend", json=body, timeout=60)


def schedule(*entries: tuple[int, str]) -> list[dict]:
    return [{"from_chunk": chunk, "prompt": prompt} for chunk, prompt in entries]


def test_an_extension_is_the_one_longer_video_and_extends_again(server, tmp_path):
    original = create(server, prompt=P1, num_frames=66)  # 2 chunks, the last trimmed to 32 frames
    # The one-shot videos the extensions must equal, made alongside.
    once = create(server, prompt=P1, num_frames=132, prompt_schedule=schedule((0, P1), (2, P2)))
    twice = create(server, prompt=P1, num_frames=165, prompt_schedule=schedule((0, P1), (2, P2), (4, P3)))
    wait(server, original["id"])

    answer = extend(server, original["id"], prompt=P2, num_frames=66)
    assert answer.status_code == 200, answer.text
    first = answer.json()
    assert first["id"] != original["id"] and first["extended_from_video_id"] == original["id"]
    assert (first["total_chunks"], first["num_frames"], first["chunks_completed"]) == (4, 129, 2)
    assert first["seed"] == 7 and first["prompt"] == P1
    done = wait(server, first["id"])
    assert [entry["prompt"] for entry in done["prompt_schedule"]] == [P1, P2]

    second = extend(server, first["id"], prompt=P3, seconds=33 / 24)  # 33 frames at the video's 24 fps
    assert second.status_code == 200, second.text
    second = second.json()
    assert (second["total_chunks"], second["num_frames"]) == (5, 165)
    wait(server, second["id"])

    wait(server, once["id"])
    wait(server, twice["id"])
    extended, reference = frames(server, first["id"], tmp_path), frames(server, once["id"], tmp_path)
    assert extended.shape == reference.shape == (129, 64, 128, 3)
    assert np.array_equal(extended, reference)
    extended, reference = frames(server, second["id"], tmp_path), frames(server, twice["id"], tmp_path)
    assert extended.shape == reference.shape == (165, 64, 128, 3)
    assert np.array_equal(extended, reference)
    # The original is untouched and still plays.
    assert frames(server, original["id"], tmp_path).shape == (65, 64, 128, 3)

    # Its stored history gone (the snapshot deleted): a clear 409.
    (server.data_dir / "videos" / original["id"] / "resume.pt").unlink()
    answer = extend(server, original["id"], num_frames=33)
    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert error["code"] == "not_extendable" and "history" in error["message"]


def test_extend_refuses_what_it_cannot_extend(server):
    unknown = extend(server, "video_" + "0" * 32, num_frames=33)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert extend(server, "not-a-video", num_frames=33).status_code == 404

    running = create(server, prompt=P1, num_frames=33 * 6)
    try:
        answer = extend(server, running["id"], num_frames=33)
        assert answer.status_code == 409, answer.text
        assert answer.json()["error"]["code"] == "not_extendable" and "completed" in answer.json()["error"]["message"]
    finally:
        httpx.delete(f"{server.api}/videos/{running['id']}")

    for body in ({"num_frames": 33, "seconds": 1.0}, {"prompt": P2}):
        answer = extend(server, running["id"], **body)
        assert answer.status_code == 422, answer.text
        message = answer.json()["error"]["message"]
        assert "seconds" in message and "num_frames" in message
    answer = extend(server, running["id"], num_frames=33, size="64x64")
    assert answer.status_code == 422 and answer.json()["error"]["param"] == "size"


def test_an_expired_video_answers_410_and_a_new_seed_reseeds_at_the_seam():
    from helios_serve.errors import JobExpiredError
    from helios_serve.jobs.extend import check_extendable, extension_settings
    from helios_serve.jobs.status import JobStatus
    from helios_serve.jobs.store import JobRecord

    record = JobRecord(id="video_" + "1" * 32, model="helios-tiny", prompt=P1, status=JobStatus.COMPLETED,
                       created_at=0, request={"prompt": P1, "seed": 7, "num_frames": 66}, width=128, height=64,
                       num_frames=65, fps=24, total_chunks=2, completed_at=0, expires_at=int(time.time()) - 1)
    with pytest.raises(JobExpiredError):
        check_extendable(None, record)
    same = extension_settings(record, 33, None, 7, 0)
    assert same["num_frames"] == 99 and "seed_from_chunk" not in same and "prompt_schedule" not in same
    reseeded = extension_settings(record, 33, P2, 8, 1)
    assert reseeded["seed"] == 8 and reseeded["seed_from_chunk"] == 2
    assert reseeded["prompt_schedule"][-1] == {"from_chunk": 2, "prompt": P2, "transition_chunks": 1}


def test_the_untrimmed_last_chunk_encodes_to_the_longer_videos_segment():
    """A trimmed last chunk hands out the frames it cut; with them its segment is, byte for byte,
    the segment of the same chunk in a longer video (the chunk encoder is deterministic)."""
    from helios_serve.engine.engine import HeliosEngine
    from helios_serve.jobs.sink import FRAGMENTS_PER_CHUNK
    from helios_serve.sampling_params import VideoSamplingParams
    from helios_serve.streaming.fmp4 import ChunkEncoder

    engine = HeliosEngine()
    for num_frames in (66, 132):
        spec = engine.resolve(P1, VideoSamplingParams(num_frames=num_frames, seed=3, height=64, width=64))
        engine.core.add_request(str(num_frames), spec)
    chunks = {}
    while engine.core.has_unfinished():
        chunks.update({(c.request_id, c.chunk_index): c for c in engine.core.step().chunks})
    short, long = chunks["66", 1], chunks["132", 1]
    assert len(short.frames) == 32 and len(short.cut_frames) == 1 and long.cut_frames is None
    assert len(chunks["132", 3].frames) == 30 and len(chunks["132", 3].cut_frames) == 3
    encoder = ChunkEncoder(24)
    untrimmed = encoder.encode(np.concatenate([short.frames, short.cut_frames]), 33, FRAGMENTS_PER_CHUNK + 1)
    reference = encoder.encode(long.frames, 33, FRAGMENTS_PER_CHUNK + 1)
    assert untrimmed.media == reference.media and untrimmed.init == reference.init
