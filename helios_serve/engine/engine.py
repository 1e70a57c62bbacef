"""HeliosEngine: the offline Python API.

    from helios_serve import HeliosEngine, VideoSamplingParams
    engine = HeliosEngine(model="helios-tiny")
    (video,) = engine.generate(["a fox in the snow"], VideoSamplingParams(num_frames=66, seed=1))
    video.frames  # uint8 [T, H, W, 3]

Requests run one after another, each through the ModelRunner's units of work (begin chunk,
denoising steps, stage transitions, finish chunk); the step scheduler interleaves the same
units across many requests.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ..model_executor.model_runner import ModelRunner, RunnerConfig
from ..outputs import VideoChunkOutput, VideoOutput
from ..sampling_params import VideoSamplingParams

ProgressCallback = Callable[[str, int, int], None]
"""(request_id, units_done, units_total): a unit is a denoising step or a chunk decode."""


class HeliosEngine:
    def __init__(self, model: str = "helios-tiny", device: str | None = None, dtype: str | None = None, **kwargs):
        self.runner = ModelRunner(RunnerConfig(model=model, device=device, dtype=dtype, **kwargs))
        self.model = model

    @property
    def variant(self):
        return self.runner.variant

    def resolve(self, prompt: str, params: VideoSamplingParams):
        return params.resolve(prompt, self.runner.variant, has_vae=self.runner.vae is not None)

    def generate(
        self,
        prompts: str | Sequence[str],
        params: VideoSamplingParams | Sequence[VideoSamplingParams] | None = None,
        on_chunk: Callable[[VideoChunkOutput], None] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> list[VideoOutput]:
        """One video per prompt. ``on_chunk`` receives each chunk as soon as it is decoded."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        params = params or VideoSamplingParams()
        param_list = [params] * len(prompts) if isinstance(params, VideoSamplingParams) else list(params)
        if len(param_list) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(param_list)} sampling params")
        specs = [self.resolve(p, sp) for p, sp in zip(prompts, param_list)]  # validate all before running any
        outputs = []
        for prompt, spec, sp in zip(prompts, specs, param_list):
            started, chunks = time.perf_counter(), []
            for chunk in self._stream(spec, on_progress):
                chunks.append(chunk.frames)
                if on_chunk:
                    on_chunk(chunk)
            fps = sp.fps or self.variant.default_fps
            elapsed = time.perf_counter() - started
            outputs.append(VideoOutput(chunk.request_id, prompt, np.concatenate(chunks), fps, spec.num_chunks, elapsed))
        return outputs

    def stream(
        self, prompt: str, params: VideoSamplingParams | None = None, on_progress: ProgressCallback | None = None
    ) -> Iterator[VideoChunkOutput]:
        """The chunks of one video, each yielded as soon as it is decoded; nothing is kept."""
        return self._stream(self.resolve(prompt, params or VideoSamplingParams()), on_progress)

    def _stream(self, spec, on_progress) -> Iterator[VideoChunkOutput]:
        request_id = uuid.uuid4().hex
        runner = self.runner
        total_units = sum(sum(spec.steps_in_chunk(k)) + 1 for k in range(spec.num_chunks))
        done = 0

        def advance():
            nonlocal done
            done += 1
            if on_progress:
                on_progress(request_id, done, total_units)

        runner.add_request(request_id, spec)
        try:
            state = runner.requests[request_id]
            for chunk_index in range(spec.num_chunks):
                runner.begin_chunk(request_id)
                while True:
                    while not state.stage_done:
                        runner.denoise_step([request_id])
                        advance()
                    if state.is_last_stage:
                        break
                    runner.next_stage(request_id)
                frames = runner.finish_chunk(request_id).numpy()
                advance()
                yield VideoChunkOutput(request_id, chunk_index, spec.num_chunks, frames)
        finally:
            runner.remove_request(request_id)
