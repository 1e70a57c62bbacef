"""An accelerator simulator: the executor's contract with no model and no GPU.

Every unit of work of a StepPlan waits as long as the cost model gives for the released 14B
model on the chosen GPU, and decoded chunks are synthetic frames. Everything above the executor
(scheduler, decode overlap, server, streaming, replicas) runs for real, so serving questions
(frames/s per GPU, real-time streams per GPU, time to first chunk under load) get answers at
true time ratios on a CPU. The answers are a simulation: as good as the cost model's rates.

Rates, all derived from the GPU's dense bf16 peak (hardware.py):
- transformer forwards: ForwardTiming (the weights streamed once, ~1,000 kernel launches, the
  rows' FLOPs at ``mfu`` of the peak); the prompt encoder at the same efficiency;
- VAE decode: VAE_EFFICIENCY of the peak by dtype, fitted to gpu-review.md §1.2 (about 0.45 s
  per fp32 384x640 chunk on an H100; bf16 1.9x faster);
- a decode overlapped with the denoising (decode_worker.py's side stream) hides
  DECODE_HIDDEN_FRACTION of its time; the rest still takes the GPU from the forwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .hardware import ACCELERATORS, LAUNCH_SECONDS
from .model_executor.checkpoint import MODEL_ALIASES, ModelVariant, official_variant, read_variant
from .model_executor.config import HELIOS_14B
from .model_executor.cost_model import (
    ForwardTiming,
    stage_latent_sizes,
    text_encoder_flops,
    transformer_parameters,
    vae_decode_flops,
)
from .model_executor.step_io import LATENT_FRAMES_PER_CHUNK, DecodedChunk, RequestSpec, StepPlan, StepResult

VAE_EFFICIENCY = {"float32": 0.156, "bfloat16": 0.296}
DECODE_HIDDEN_FRACTION = 0.35
"""gpu-review.md lever 3: on one GPU only the VAE's low-occupancy phases hide (20-50%)."""
LIGHT_UNIT_S = 0.5e-3
"""A chunk's begin or a stage transition: a few small device kernels, no host sync."""


def simulated_variant(model: str) -> ModelVariant:
    """The sampling recipe of a released model, named by its alias or its Hugging Face repo id (no
    download: the recipe is known without weights), or of a checkpoint directory (configs only)."""
    alias = {repo_id: alias for alias, repo_id in MODEL_ALIASES.items()}.get(model, model)
    if alias in MODEL_ALIASES:
        return official_variant(alias.removeprefix("helios-"))
    if Path(model).is_dir():
        return read_variant(Path(model))
    accepted = ", ".join(name for pair in MODEL_ALIASES.items() for name in pair)
    raise ValueError(f"--simulate runs a released model's recipe: give {accepted} or a checkpoint "
                     f"directory, not {model!r}")


@dataclass
class _Decode:
    request_id: str
    chunk_index: int
    frames: np.ndarray
    ready_at: float


class SimulatedExecutor:
    """Units of work as waits of their predicted time on ``gpu`` (a key of hardware.ACCELERATORS)."""

    def close(self) -> None:
        """Nothing to release."""

    def __init__(self, model: str, gpu: str, mfu: float, vae_dtype: str = "float32",
                 decode_in_background: bool | None = None, clock=time.monotonic, sleep=time.sleep):
        """``clock`` and ``sleep``: the time the simulated GPU lives in (tests pass a virtual one)."""
        if gpu not in ACCELERATORS:
            raise ValueError(f"unknown GPU {gpu!r} to simulate; choose one of {', '.join(ACCELERATORS)}")
        self.variant = simulated_variant(model)
        self.accelerator = ACCELERATORS[gpu]
        self.config = HELIOS_14B
        self.num_parameters = transformer_parameters(self.config)
        peak = self.accelerator.bf16_tflops * 1e12
        self._timing = ForwardTiming.on_device(self.config, 2 * self.num_parameters, peak * mfu,
                                               self.accelerator.memory_tb_s * 1e12, LAUNCH_SECONDS["cuda"])
        self._vae_flops_per_s = peak * VAE_EFFICIENCY[vae_dtype]
        self.decodes_in_background = True if decode_in_background is None else decode_in_background
        self.specs: dict[str, RequestSpec] = {}
        self._decodes: list[_Decode] = []
        self._side_stream_free_at = 0.0
        self._frames: dict[tuple[int, int, int], np.ndarray] = {}
        self.clock, self.sleep = clock, sleep

    # -- what the engine asks of an executor ------------------------------------------------
    has_vae = True
    attention_backend = "simulated"

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return self.config.patch_size

    def forward_timing(self) -> ForwardTiming:
        return self._timing

    def peak_flops(self) -> tuple[float, str]:
        return self.accelerator.bf16_tflops * 1e12, f"simulated {self.accelerator.name} datasheet"

    @staticmethod
    def snapshot_chunks_done(path: str) -> int:
        return 0  # simulated chunks carry no resume state: a resumed job starts again

    @property
    def pending_decodes(self) -> int:
        return len(self._decodes)

    # -- one step ---------------------------------------------------------------------------
    def prepare_prompt(self, prompt: str) -> None:
        """Nothing to encode: a simulated model has no text encoder."""

    def execute(self, plan: StepPlan) -> StepResult:
        started = self.clock()
        result = StepResult()
        for request_id in plan.free:
            self.specs.pop(request_id, None)
            self._decodes = [d for d in self._decodes if d.request_id != request_id]
        busy_s = 0.0
        for request_id, spec in plan.encode:
            self.specs[request_id] = spec
            busy_s += (2 if spec.use_cfg else 1) * text_encoder_flops() / self._timing.flops_per_s
        busy_s += LIGHT_UNIT_S * (len(plan.begin_chunk) + len(plan.next_stage))
        if plan.denoise:
            result.num_rows = sum(self._rows(r) for r in plan.denoise)
            result.model_flops = sum(self._rows(r) * self._row_flops(r, plan.positions[r].stage) for r in plan.denoise)
            busy_s += self._timing.seconds(result.model_flops)
        for request_id in plan.decode:
            busy_s += self._decode(request_id, plan.positions[request_id].chunk, started + busy_s, result)
        self._wait_until(started + busy_s)
        if not plan.request_ids() and self._decodes:  # nothing else to do: wait for a decode
            self._wait_until(min(d.ready_at for d in self._decodes))
        self._collect(result)
        result.model_seconds = self.clock() - started
        return result

    def _rows(self, request_id: str) -> int:
        return 2 if self.specs[request_id].use_cfg else 1

    def _row_flops(self, request_id: str, stage: int) -> int:
        spec = self.specs[request_id]
        noisy = stage_latent_sizes(spec.height, spec.width, len(spec.stage_steps))[stage]
        return self._timing.row_flops(noisy, stage_latent_sizes(spec.height, spec.width, 1)[0])

    def _decode(self, request_id: str, chunk_index: int, now: float, result: StepResult) -> float:
        """Start a chunk's decode at ``now``; returns the time it takes from the step's forwards."""
        spec = self.specs[request_id]
        latent_hw = stage_latent_sizes(spec.height, spec.width, 1)[0]
        decode_s = vae_decode_flops(LATENT_FRAMES_PER_CHUNK, *latent_hw) / self._vae_flops_per_s
        frames = self._synthetic_frames(spec.frames_in_chunk(chunk_index), spec.height, spec.width)
        if chunk_index + 1 == spec.num_chunks:  # the request's last unit
            del self.specs[request_id]
        if not self.decodes_in_background:
            result.chunks.append(DecodedChunk(request_id, chunk_index, frames))
            return decode_s
        start = max(now, self._side_stream_free_at)
        self._side_stream_free_at = start + decode_s
        self._decodes.append(_Decode(request_id, chunk_index, frames, start + decode_s))
        return (1 - DECODE_HIDDEN_FRACTION) * decode_s

    def _collect(self, result: StepResult) -> None:
        now = self.clock()
        ready = [d for d in self._decodes if d.ready_at <= now]
        self._decodes = [d for d in self._decodes if d.ready_at > now]
        result.chunks += [DecodedChunk(d.request_id, d.chunk_index, d.frames) for d in ready]

    def _synthetic_frames(self, frames: int, height: int, width: int) -> np.ndarray:
        """A grey ramp, made once per shape and shared read-only (cheap to encode)."""
        key = (frames, height, width)
        if key not in self._frames:
            ramp = np.linspace(16, 235, width, dtype=np.uint8)[None, None, :, None]
            array = np.ascontiguousarray(np.broadcast_to(ramp, (frames, height, width, 3)))
            array.setflags(write=False)
            self._frames[key] = array
        return self._frames[key]

    def _wait_until(self, deadline: float) -> None:
        remaining = deadline - self.clock()
        if remaining > 0:
            self.sleep(remaining)
