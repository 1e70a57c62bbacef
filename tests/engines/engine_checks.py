"""What the engine integration tests share: a tiny Helios checkpoint in diffusers format,
MP4 decoding, and our own engine's frames for the same request."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import av
import numpy as np

from conftest import build_reference_pipeline

SIZE = dict(height=64, width=64)  # the smallest size whose 3-stage pyramid fits


def console_script(name: str) -> str:
    """An engine's command from this interpreter's environment, activated or not."""
    return str(Path(sys.executable).with_name(name))


def save_tiny_checkpoint(folder) -> str:
    """A Distilled-style tiny checkpoint, as `save_pretrained` writes it (no hub access)."""
    build_reference_pipeline("distilled").save_pretrained(folder)
    return str(folder)


def decode_mp4(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def engine_frames(checkpoint: str, requests: list[tuple[str, dict]]) -> list[np.ndarray]:
    """Our HeliosEngine's frames for (prompt, sampling fields) pairs, generated together."""
    from helios_serve import HeliosEngine, VideoSamplingParams

    engine = HeliosEngine(model=checkpoint)
    videos = engine.generate([p for p, _ in requests], [VideoSamplingParams(**f) for _, f in requests])
    return [video.frames for video in videos]


def make_image(path) -> str:
    """A 64x64 PNG to condition on (image-to-video), at the video size so no engine resizes it."""
    from PIL import Image

    pixels = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def run_serving_benchmark(base_url: str, backend: str, tmp_path) -> dict:
    """benchmarks/benchmark_serving.py against an engine's server: 3 concurrent 33-frame jobs.
    Returns the result record (the same format as for helios-serve)."""
    import json
    import subprocess

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "benchmark_serving.py"
    out = tmp_path / "bench.jsonl"
    done = subprocess.run(
        [sys.executable, str(script), "--base-url", base_url, "--backend", backend, "--num-prompts", "3",
         "--max-concurrency", "3", "--num-frames", "33", "--size", "64x64", "--slo", "600", "--disable-tqdm",
         "--extra", '{"pyramid_num_inference_steps_list": [1, 1, 1]}', "--output-file", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout)
    return json.loads(out.read_text().splitlines()[-1])
