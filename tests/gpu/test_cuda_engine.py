"""The whole engine on CUDA for each variant: it runs, it agrees with the CPU, and no unit but
the decode synchronises the host with the device (counted on real CUDA)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from helios_serve import HeliosEngine, VideoSamplingParams
from helios_serve.model_executor.device import HostSyncCounter

# Run with `HELIOS_TEST_CUDA=1 python -m pytest tests/gpu` on a machine with CUDA: the variable keeps
# Triton's interpreter off (tests/conftest.py), so kernels compile for the device. Elsewhere every
# test here is skipped, and counted as skipped.
pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and os.environ.get("HELIOS_TEST_CUDA")),
                                reason="needs a CUDA GPU and HELIOS_TEST_CUDA=1")

SIZE = dict(height=64, width=64)
IMAGE = np.full((64, 64, 3), 128, dtype=np.uint8)
MODES = {"t2v": {}, "i2v": {"image": IMAGE}}
# fp32 on the GPU against fp32 on the CPU: only summation order differs (cuDNN's TF32 convolutions
# are turned off for the comparison). bf16 is checked to run here and, for helios-tiny, against
# the CPU by benchmarks/gpu_check.py (random tiny checkpoints with a random VAE amplify bf16
# rounding too much for a frame comparison to mean anything).
MEAN_ABS_MAX, PSNR_MIN_DB = 1.0, 40.0


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant,extra", [
    ("distilled", dict(pyramid_num_inference_steps_list=[2, 2, 2], is_amplify_first_chunk=True)),
    ("mid", dict(pyramid_num_inference_steps_list=[2, 2, 2])),
    ("base", dict(num_inference_steps=4)),
])
def test_each_variant_runs_on_cuda_and_agrees_with_the_cpu(tiny_checkpoint, variant, extra, mode, monkeypatch):
    _, folder = tiny_checkpoint(variant)
    params = VideoSamplingParams(num_frames=66, seed=0, **SIZE, **extra, **MODES[mode])
    bf16 = HeliosEngine(model=str(folder), device="cuda", dtype="bfloat16").generate(["a fox"], params)[0].frames
    assert bf16.shape == (65, 64, 64, 3)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    gpu = HeliosEngine(model=str(folder), device="cuda", dtype="float32").generate(["a fox"], params)[0].frames
    cpu = HeliosEngine(model=str(folder), device="cpu", dtype="float32").generate(["a fox"], params)[0].frames
    diff = np.abs(gpu.astype(np.int16) - cpu)
    assert diff.mean() <= MEAN_ABS_MAX and _psnr(gpu, cpu) >= PSNR_MIN_DB, (diff.mean(), _psnr(gpu, cpu))


def test_no_unit_but_the_decode_synchronises_on_cuda():
    engine = HeliosEngine(model="helios-tiny", device="cuda", dtype="bfloat16")
    params = VideoSamplingParams(num_frames=66, seed=1)  # amplified first chunk, [2, 2, 2]
    spec = engine.resolve("a fox", params)
    request = engine.core.add_request("sync-count", spec)
    counts = {"decode": 0, "other": 0}
    while not request.status.is_finished:
        torch.cuda.synchronize()
        with HostSyncCounter() as counter:
            output = engine.core.step()
        counts["decode" if output.chunks else "other"] += counter.count
    assert request.error is None
    assert counts["other"] == 0 and counts["decode"] == 2 * 2, counts  # per chunk: non-finite flag, frames
