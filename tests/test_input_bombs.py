"""Inputs are bounded before they are decoded (issue 18, item 1).

Small uploads can declare huge pictures: a PNG of ~140 KB that says 12000x12000, an MP4 of ~25 KB
holding 300 flat frames of 1920x1088. Each is built here; peak memory is measured as the resident
set of a fresh process (or of the live server), since PIL and PyAV allocate outside Python's view.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from helios_serve import video_io
from helios_serve.model_executor.step_io import FRAMES_PER_CHUNK, HISTORY_SIZES, LATENT_FRAMES_PER_CHUNK
from helios_serve.video_io import VIDEO_HISTORY_FRAMES, encode_mp4, read_image_bytes, read_video

MB = 2**20
GROWTH_LIMIT = 100 * MB
TESTS = Path(__file__).parent

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="memory is read from /proc")


# -- the bombs -------------------------------------------------------------------------------------
def png_bomb(side: int = 12000) -> bytes:
    """A black PNG of side x side pixels: deflate squeezes its rows of zeros ~1000:1."""
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def flat_video(path: Path, width: int, height: int, frames: int) -> Path:
    """An H.264 MP4 of ``frames`` grey frames: a few bytes a frame whatever the size."""
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        grey = av.VideoFrame.from_ndarray(np.full((height * 3 // 2, width), 128, np.uint8), format="yuv420p")
        for _ in range(frames):
            for packet in stream.encode(grey):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    png = folder / "bomb.png"
    png.write_bytes(png_bomb())
    side = int(np.sqrt(video_io.MAX_INPUT_PIXELS)) + 256  # just over the pixel cap
    return {
        "png": png,
        "hd_video": flat_video(folder / "hd.mp4", 1920, 1088, 300),
        "wide_video": flat_video(folder / "wide.mp4", side, side, 2),
        "long_video": flat_video(folder / "long.mp4", 64, 64, video_io.MAX_INPUT_VIDEO_FRAMES + 1),
    }


# -- measuring -------------------------------------------------------------------------------------
def _status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_growth(pid: int, action):
    """(how far the resident memory of process ``pid`` rose above its level before ``action()``,
    at its peak, and the action's result). The peak is the kernel's high-water mark, reset
    first; where it cannot be reset, the memory still held afterwards is all that is seen."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: reset the peak resident set (VmHWM)
        after_field = "VmHWM"
    except OSError:
        after_field = "VmRSS"
    baseline = _status_bytes(pid, "VmRSS")
    result = action()
    return _status_bytes(pid, after_field) - baseline, result


CHILD = """
import json, sys
import av, PIL.Image  # loaded in any server: their import is not the input's cost
import test_input_bombs
test_input_bombs.read_and_report(json.loads(sys.argv[1]))
"""


def read_and_report(spec: dict) -> None:
    """In the child: the read named by ``spec``, measured; prints one JSON line."""
    source = Path(spec["file"]).read_bytes() if spec["call"] == "read_image_bytes" else spec["file"]
    kwargs = {name: tuple(value) if isinstance(value, list) else value for name, value in spec["kwargs"].items()}

    def read() -> dict:
        try:
            return {"shape": list(getattr(video_io, spec["call"])(source, spec["name"], **kwargs).shape)}
        except ValueError as exc:
            return {"error": str(exc)}

    growth, result = peak_growth(os.getpid(), read)
    print(json.dumps({**result, "growth": growth}))


def measured_read(call: str, file: Path, name: str, **kwargs) -> dict:
    """video_io.<call>(file, name, **kwargs) in a fresh Python: {"growth": bytes, "shape" or "error"}."""
    spec = json.dumps({"call": call, "file": str(file), "name": name, "kwargs": kwargs})
    done = subprocess.run([sys.executable, "-c", CHILD, spec], capture_output=True, text=True, timeout=300,
                          cwd=TESTS, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (
                              str(TESTS), os.environ.get("PYTHONPATH"))))})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\n{call}({file.name}, {kwargs}): peak growth {result['growth'] / MB:.1f} MB, "
          f"{result.get('error') or result.get('shape')}")
    return result


# -- bounded reads ---------------------------------------------------------------------------------
def test_png_bomb_is_refused_from_its_header(bombs):
    assert bombs["png"].stat().st_size < 300_000  # small upload, 144 M pixels
    result = measured_read("read_image_bytes", bombs["png"], "input_reference", size=[640, 384])
    assert "input_reference" in result["error"] and "12000x12000" in result["error"]
    assert result["growth"] < GROWTH_LIMIT


@pytest.mark.parametrize("video,mentions", [("wide_video", "pixels"), ("long_video", "frames")])
def test_video_over_the_caps_is_refused_before_decoding(bombs, video, mentions):
    result = measured_read("read_video", bombs[video], "video_reference", size=[64, 64],
                           keep_last=VIDEO_HISTORY_FRAMES)
    assert "video_reference" in result["error"] and mentions in result["error"]
    assert str(bombs[video].parent) not in result["error"]  # no server paths
    assert result["growth"] < GROWTH_LIMIT


def test_too_much_decoding_work_is_refused(tmp_path, monkeypatch):
    video = flat_video(tmp_path / "clip.mp4", 64, 64, 40)
    monkeypatch.setattr(video_io, "MAX_INPUT_DECODE_PIXELS", 64 * 64 * 39)
    with pytest.raises(ValueError, match="video_reference is too long for its size: 40 frames of 64x64"):
        read_video(video, "video_reference")


def test_hd_video_bomb_is_read_in_bounded_memory(bombs):
    """300 frames of 1080p in ~25 KB: decoded one frame at a time, only the frames the model uses kept."""
    assert bombs["hd_video"].stat().st_size < 100_000
    result = measured_read("read_video", bombs["hd_video"], "video_reference", size=[64, 64],
                           keep_last=VIDEO_HISTORY_FRAMES)
    assert result["growth"] < GROWTH_LIMIT
    assert result["shape"] == [1 + VIDEO_HISTORY_FRAMES, 64, 64, 3]


# -- the model gets the same pixels ----------------------------------------------------------------
def full_decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def random_clip(path: Path, frames: int, width: int = 64, height: int = 64) -> Path:
    clip = np.random.default_rng(frames).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    path.write_bytes(encode_mp4(clip, 24))
    return path


def history_frames(video: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """What video-to-video conditioning takes from a video: the anchor (first frame) and the
    33-frame windows, aligned to the end, whose latents stay in the history
    (model_executor/conditioning.py: video_conditioning)."""
    num_windows = len(video) // FRAMES_PER_CHUNK
    start = len(video) - num_windows * FRAMES_PER_CHUNK
    windows = [video[start + i * FRAMES_PER_CHUNK: start + (i + 1) * FRAMES_PER_CHUNK] for i in range(num_windows)]
    used = -(-sum(HISTORY_SIZES) // LATENT_FRAMES_PER_CHUNK)
    return video[0], windows[-used:]


@pytest.mark.parametrize("frames", [40, 99, 100, 101, 140])
def test_kept_frames_are_those_the_model_uses(tmp_path, frames):
    path = random_clip(tmp_path / "clip.mp4", frames)
    reference, kept = full_decode(path), read_video(path, "video_reference", keep_last=VIDEO_HISTORY_FRAMES)
    assert len(kept) == min(frames, 1 + VIDEO_HISTORY_FRAMES)
    (anchor, windows), (kept_anchor, kept_windows) = history_frames(reference), history_frames(kept)
    assert np.array_equal(anchor, kept_anchor) and len(windows) == len(kept_windows)
    assert all(np.array_equal(a, b) for a, b in zip(windows, kept_windows))


def test_first_and_last_frames_are_kept_in_order(tmp_path):
    path = random_clip(tmp_path / "clip.mp4", 40)
    reference = full_decode(path)
    assert np.array_equal(read_video(path, keep_last=10), np.concatenate([reference[:1], reference[-10:]]))
    assert np.array_equal(read_video(path, keep_last=39), reference)  # the first and the last 39: all
    assert np.array_equal(read_video(path), reference)


def keyframed_clip(path: Path, frames: int, codec: str, options: dict) -> Path:
    """A moving pattern (each frame differs), encoded with keyframes every few frames."""
    pattern = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=24)
        stream.width, stream.height, stream.pix_fmt, stream.options = 64, 64, "yuv420p", options
        for i in range(frames):
            frame = np.roll(pattern, i, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


GOP = 12


@pytest.mark.parametrize("codec, options", [
    ("libx264", {"preset": "medium", "g": str(GOP)}),  # B-frames: decode order differs from presentation order
    ("libx264", {"preset": "medium", "g": str(GOP), "x264-params": "open-gop=1"}),
    ("mpeg4", {"g": str(GOP), "bf": "2"}),
])
def test_frames_before_the_last_keyframe_ahead_of_the_tail_are_never_decoded(tmp_path, monkeypatch, codec, options):
    path = keyframed_clip(tmp_path / "clip.mp4", 300, codec, options)
    reference = full_decode(path)
    decoded = []

    def counted(container, stream):
        for frame in container.decode(stream):
            decoded.append(frame.pts)
            yield frame

    monkeypatch.setattr(video_io, "_decoded", counted)
    tail = video_io.read_video_tail(path, "video_reference", size=(32, 32))
    full_size = read_video(path, keep_last=VIDEO_HISTORY_FRAMES)
    assert np.array_equal(full_size, np.concatenate([reference[:1], reference[-VIDEO_HISTORY_FRAMES:]]))
    assert tail.frames.shape == (1 + VIDEO_HISTORY_FRAMES, 32, 32, 3) and tail.skipped_frames == 200
    assert np.array_equal(tail.frames, np.stack([np.asarray(video_io._resized(Image.fromarray(f), (32, 32)))
                                                 for f in full_size]))
    per_read = len(decoded) // 2
    print(f"{codec} {options}: {per_read} of 300 frames decoded")
    assert per_read <= 1 + VIDEO_HISTORY_FRAMES + GOP  # the anchor, then from a keyframe at most a GOP early


def test_early_resizing_gives_the_model_the_same_pixels(tmp_path):
    """The model's processor resizes inputs itself; resizing while reading must not change what it sees."""
    import torch

    from helios_serve.model_executor.conditioning import _as_pil, _as_pil_video, _video_processor

    width, height = 64, 48
    path = random_clip(tmp_path / "clip.mp4", 40, width=96, height=80)
    processor = _video_processor()
    full = processor.preprocess_video(_as_pil_video(full_decode(path)), height=height, width=width)
    early = read_video(path, size=(width, height), keep_last=VIDEO_HISTORY_FRAMES)
    assert early.shape == (40, height, width, 3)
    assert torch.equal(full, processor.preprocess_video(_as_pil_video(early), height=height, width=width))

    image = np.random.default_rng(3).integers(0, 256, (80, 96, 4), dtype=np.uint8)  # RGBA: converted first
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    full_image = read_image_bytes(png.getvalue(), "input_reference")
    early_image = read_image_bytes(png.getvalue(), "input_reference", size=(width, height))
    assert early_image.shape == (height, width, 3)
    assert torch.equal(processor.preprocess(_as_pil(full_image), height=height, width=width),
                       processor.preprocess(_as_pil(early_image), height=height, width=width))


# -- at most two decodes at once -------------------------------------------------------------------
def test_at_most_two_inputs_decode_at_once(monkeypatch):
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    inside, most_inside, release, changed = [0], [0], threading.Event(), threading.Condition()
    check_pixels = video_io._check_pixels

    def held_check(*args):  # runs inside the decode slot; holds it until released
        with changed:
            inside[0] += 1
            most_inside[0] = max(most_inside[0], inside[0])
            changed.notify_all()
        release.wait(timeout=60)
        with changed:
            inside[0] -= 1
        return check_pixels(*args)

    monkeypatch.setattr(video_io, "_check_pixels", held_check)
    readers = [threading.Thread(target=read_image_bytes, args=(png.getvalue(), "input_reference")) for _ in range(4)]
    for reader in readers:
        reader.start()
    try:
        with changed:
            assert changed.wait_for(lambda: inside[0] >= 2, timeout=60)
        assert not video_io._DECODE_SLOTS.acquire(blocking=False)  # both slots are held: the others wait
    finally:
        release.set()
        for reader in readers:
            reader.join(timeout=60)
    assert most_inside[0] == 2


# -- through the server ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vae_server(tiny_checkpoint, tmp_path_factory):
    """A server whose model has a VAE, so it takes image and video inputs."""
    from live_server import start_server

    _, folder = tiny_checkpoint("distilled")
    live = start_server(tmp_path_factory.mktemp("bombs-server") / "data", str(folder))
    yield live
    live.stop()


def post_upload(server, field: str, path: Path, **fields) -> httpx.Response:
    kind = "image/png" if path.suffix == ".png" else "video/mp4"
    form = {"prompt": "a fox", "size": "64x64", "num_frames": "33", **fields}
    return httpx.post(f"{server.api}/videos", data=form, files={field: (path.name, path.read_bytes(), kind)},
                      timeout=120)


def wait_finished(server, video_id: str) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = httpx.get(f"{server.api}/videos/{video_id}").json()
        if job["status"] in ("completed", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"{video_id} did not finish")


@pytest.mark.parametrize("field,bomb", [("input_reference", "png"), ("video_reference", "wide_video")])
def test_server_refuses_bombs_naming_the_field(vae_server, bombs, field, bomb):
    growth, response = peak_growth(vae_server.process.pid, lambda: post_upload(vae_server, field, bombs[bomb]))
    print(f"\nserver, {bomb} as {field}: {response.status_code}, peak growth {growth / MB:.1f} MB")
    assert response.status_code == 422 and field in response.json()["error"]["message"], response.text
    assert growth < GROWTH_LIMIT


def test_server_reads_an_hd_video_in_bounded_memory(vae_server, bombs, tmp_path):
    warm_up = post_upload(vae_server, "video_reference", random_clip(tmp_path / "clip.mp4", 40),
                          pyramid_num_inference_steps_list="1,1,1")
    assert warm_up.status_code == 200, warm_up.text
    assert wait_finished(vae_server, warm_up.json()["id"])["status"] == "completed"
    growth, response = peak_growth(vae_server.process.pid, lambda: post_upload(
        vae_server, "video_reference", bombs["hd_video"], pyramid_num_inference_steps_list="1,1,1"))
    print(f"\nserver, 1920x1088x300 video at 64x64: {response.status_code}, peak growth {growth / MB:.1f} MB")
    assert response.status_code == 200, response.text
    assert growth < GROWTH_LIMIT
    assert wait_finished(vae_server, response.json()["id"])["status"] == "completed"


def test_model_without_inputs_refuses_bombs_undecoded(server, bombs):
    """helios-tiny has no VAE: it refuses inputs, and now before decoding them."""
    growth, response = peak_growth(server.process.pid, lambda: post_upload(server, "input_reference", bombs["png"]))
    print(f"\nhelios-tiny, PNG bomb: {response.status_code}, peak growth {growth / MB:.1f} MB")
    assert response.status_code == 422 and "VAE" in response.json()["error"]["message"], response.text
    assert growth < GROWTH_LIMIT


@pytest.mark.parametrize("frames", [100, 131, 132, 140, 200])
@pytest.mark.parametrize("noise", [True, False])
def test_the_tail_conditions_exactly_as_the_whole_video(tmp_path, frames, noise):
    """Seed for seed: the history and anchor from read_video_tail (first frame, last 99, the
    skipped windows' random draws replayed) equal those from every frame, as the reference
    encodes them (its VAE samples each window's posterior, then noises each window)."""
    import torch
    from diffusers import AutoencoderKLWan

    from helios_serve.model_executor.conditioning import video_conditioning
    from helios_serve.model_executor.models.vae import WanVAE
    from helios_serve.model_executor.step_io import RequestSpec
    from helios_serve.video_io import read_video_tail

    torch.manual_seed(0)
    vae = WanVAE(AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                  temperal_downsample=[False, True, True]).eval())
    path = random_clip(tmp_path / "clip.mp4", frames, 32, 32)
    tail = read_video_tail(path, "video_reference")
    assert tail.skipped_frames == max(0, frames - 1 - VIDEO_HISTORY_FRAMES)

    def condition(video, skipped):
        spec = RequestSpec("p", "", 33, 32, 32, 0, 1.0, (1,), video=video, video_skipped_frames=skipped,
                           add_noise_to_video_latents=noise)
        with torch.inference_mode():
            return video_conditioning(spec, vae, torch.Generator().manual_seed(7), torch.device("cpu"))

    (history, anchor), (tail_history, tail_anchor) = condition(full_decode(path), 0), condition(*tail)
    assert torch.equal(history, tail_history) and torch.equal(anchor, tail_anchor)
    if tail.skipped_frames >= FRAMES_PER_CHUNK:  # the replay matters: without it the numbers differ
        unreplayed, _ = condition(tail.frames, 0)
        assert not torch.equal(history, unreplayed)
