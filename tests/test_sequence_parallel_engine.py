"""Whole videos from a sequence-parallel engine (rank 0 here, rank 1 a process it starts, gloo)
against the single-process engine, and the group's failure when a rank dies."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from helios_serve import HeliosEngine, VideoSamplingParams
from helios_serve.errors import EngineDeadError

PARAMS = VideoSamplingParams(num_frames=66, height=64, width=128, seed=7)
PROMPTS = ["a lantern in the rain", "a fox in the snow"]


def videos(engine: HeliosEngine, prompts: list[str]) -> list[np.ndarray]:
    return [video.frames for video in engine.generate(prompts, PARAMS)]


@pytest.mark.parametrize("model", ["helios-tiny", "helios-tiny-base"], ids=["distilled", "base"])
def test_sequence_parallel_videos_equal_one_process(model):
    single = HeliosEngine(model=model)
    expected = videos(single, PROMPTS[:1]) + videos(single, PROMPTS[1:])  # each alone
    parallel = HeliosEngine(model=model, sequence_parallel_size=2, policy="round-robin")
    try:
        actual = videos(parallel, PROMPTS)  # both at once: their steps share forwards
        batched = max(parallel.stats.batch_size_counts)
    finally:
        parallel.close()
    assert batched >= 2, parallel.stats.batch_size_counts
    for got, want in zip(actual, expected):
        assert got.shape == want.shape
        difference = np.abs(got.astype(int) - want.astype(int)).max()
        print(f"{model}: SP2 vs one process, max difference {difference} uint8 levels")
        assert difference <= 2


def test_a_dying_rank_fails_the_requests_and_the_engine_says_why():
    engine = HeliosEngine(model="helios-tiny", sequence_parallel_size=2)
    try:
        worker = engine.core.executor.workers[0].process
        chunks = []

        def kill_after_first_chunk(chunk):
            chunks.append(chunk)
            os.kill(worker.pid, signal.SIGKILL)

        with pytest.raises(Exception) as raised:
            engine.generate(PROMPTS[0], VideoSamplingParams(num_frames=165, height=64, width=128),
                            on_chunk=kill_after_first_chunk)
        assert len(chunks) == 1
        assert "rank 1" in str(raised.value), raised.value
        with pytest.raises(EngineDeadError, match="rank 1 exited"):
            engine.generate(PROMPTS[1], PARAMS)
    finally:
        engine.close()
