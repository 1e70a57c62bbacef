"""HeliosEngine: the synchronous Python API over the continuous-batching engine.

    from helios_serve import HeliosEngine, VideoSamplingParams
    engine = HeliosEngine(model="helios-tiny")
    videos = engine.generate(["a fox in the snow", "a lantern"], VideoSamplingParams(num_frames=66))
    videos[0].frames  # uint8 [T, H, W, 3]

All requests given to one ``generate`` call run concurrently: each engine step batches the
denoising steps of every request whose next forward has the same geometry.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ..errors import RequestCancelledError, RequestFailedError
from ..model_executor.step_io import RequestSpec
from ..outputs import VideoChunkOutput, VideoOutput
from ..request import Request, RequestStatus
from ..sampling_params import VideoSamplingParams
from .engine_core import EngineFront

ProgressCallback = Callable[[str, int, int], None]
"""(request_id, units_done, units_total): units are encodes, steps, transitions and decodes."""


def raise_for_status(request) -> None:
    """Raise if a request (its record, or a RequestProgress reading) ended without completing."""
    if request.status is RequestStatus.FINISHED_FAILED:
        raise RequestFailedError(f"request {request.request_id} failed: {request.error}")
    if request.status in (RequestStatus.FINISHED_CANCELLED, RequestStatus.FINISHED_TIMEOUT):
        reason = request.error or "cancelled"
        raise RequestCancelledError(f"request {request.request_id} did not finish: {reason}")


class HeliosEngine(EngineFront):
    def generate(
        self,
        prompts: str | Sequence[str],
        params: VideoSamplingParams | Sequence[VideoSamplingParams] | None = None,
        on_chunk: Callable[[VideoChunkOutput], None] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> list[VideoOutput]:
        """One video per prompt, generated concurrently. ``on_chunk`` gets each chunk when decoded."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        params = params or VideoSamplingParams()
        param_list = [params] * len(prompts) if isinstance(params, VideoSamplingParams) else list(params)
        if len(param_list) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(param_list)} sampling params")
        specs = [self.resolve(p, sp) for p, sp in zip(prompts, param_list)]  # validate all before running any
        requests = [self.core.add_request(uuid.uuid4().hex, spec) for spec in specs]
        frames: dict[str, list[np.ndarray]] = {r.request_id: [] for r in requests}

        def collect(chunk: VideoChunkOutput) -> None:
            frames[chunk.request_id].append(chunk.frames)
            if on_chunk:
                on_chunk(chunk)

        self._run(requests, collect, on_progress)
        outputs = []
        for request, prompt, sp in zip(requests, prompts, param_list):
            raise_for_status(request)
            elapsed = request.finished_time - request.arrival_time
            fps = sp.fps or self.variant.default_fps
            video = np.concatenate(frames[request.request_id])
            outputs.append(VideoOutput(request.request_id, prompt, video, fps, request.spec.num_chunks, elapsed))
        return outputs

    def stream(
        self, prompt: str, params: VideoSamplingParams | None = None, on_progress: ProgressCallback | None = None
    ) -> Iterator[VideoChunkOutput]:
        """The chunks of one video, each yielded as soon as it is decoded; nothing is kept."""
        return self.stream_spec(self.resolve(prompt, params or VideoSamplingParams()), on_progress)

    def stream_spec(self, spec: RequestSpec, on_progress: ProgressCallback | None = None) -> Iterator[VideoChunkOutput]:
        """``stream`` for a resolved spec (e.g. one that resumes from a snapshot)."""
        request = self.core.add_request(uuid.uuid4().hex, spec)
        try:
            while not request.status.is_finished:
                output = self.core.step()
                for chunk in output.chunks:
                    if chunk.request_id == request.request_id:
                        yield self._chunk_output(request, chunk)
                if on_progress:
                    on_progress(request.request_id, request.units_done, request.total_units)
            raise_for_status(request)
        finally:
            if not request.status.is_finished:  # the consumer stopped early
                self.core.abort_request(request.request_id)

    def _run(self, requests: list[Request], on_chunk, on_progress) -> None:
        """Step the engine until these requests are finished (the scheduler updates their status)."""
        by_id = {r.request_id: r for r in requests}
        while active := [r for r in requests if not r.status.is_finished]:
            for chunk in self.core.step().chunks:
                if chunk.request_id in by_id:
                    on_chunk(self._chunk_output(by_id[chunk.request_id], chunk))
            if on_progress:
                for request in active:  # including those that just finished: their last report is 100%
                    on_progress(request.request_id, request.units_done, request.total_units)

    @staticmethod
    def _chunk_output(request: Request, chunk) -> VideoChunkOutput:
        return VideoChunkOutput(
            request.request_id, chunk.chunk_index, request.spec.num_chunks, chunk.frames, chunk.resume_state,
            chunk.cut_frames,
        )
