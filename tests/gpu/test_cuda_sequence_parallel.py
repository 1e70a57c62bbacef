"""Sequence parallelism over NCCL and a VAE on its own GPU: needs two or more CUDA GPUs (and
HELIOS_TEST_CUDA=1); skipped, and counted as skipped, elsewhere. The CPU tests (gloo) check the
same code for numbers; these check that it runs on GPUs and agrees with one GPU."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from helios_serve import HeliosEngine, VideoSamplingParams
from helios_serve.model_executor.step_io import RunnerConfig

pytestmark = pytest.mark.skipif(
    not (os.environ.get("HELIOS_TEST_CUDA") and torch.cuda.is_available() and torch.cuda.device_count() >= 2),
    reason="needs two CUDA GPUs and HELIOS_TEST_CUDA=1")

PARAMS = VideoSamplingParams(num_frames=66, height=64, width=128, seed=3)


def _video(**config) -> np.ndarray:
    engine = HeliosEngine(model_config=RunnerConfig(model="helios-tiny", device="cuda:0", dtype="float32",
                                                    vae_device=config.pop("vae_device", None)), **config)
    try:
        return engine.generate(["a lantern in the rain"], PARAMS)[0].frames.astype(int)
    finally:
        engine.close()


def test_two_ranks_over_nccl_equal_one_gpu():
    difference = np.abs(_video(sequence_parallel_size=2) - _video()).max()
    print(f"SP2 over NCCL vs one GPU (fp32): max difference {difference} uint8 levels")
    assert difference <= 2


def test_the_vae_on_a_second_gpu_gives_the_same_frames():
    assert np.array_equal(_video(vae_device="cuda:1"), _video())
