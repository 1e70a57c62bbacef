"""Per-request device state and the chunk procedure of the Helios samplers (spec §3, §4).

A request advances in small units: begin a chunk (fresh noise, history split), denoising
steps (each one transformer call, two with CFG), stage transitions of the pyramid, and
finishing the chunk (anchor and history update). Every unit touches only its own request's
state, and all randomness comes from the request's own generator in the reference's order,
so requests can be interleaved and batched in any way without changing their output.

Device discipline: random numbers are drawn on the host (the request's generator, as the
reference draws them) and go up with ``to_device``, asynchronously; schedules stay on the host
and meet the latents as scalars; nothing in a unit reads device data back (the one read, the
non-finite check, waits for the decode). The meta-device guard in tests/test_device_guard.py
runs every unit this way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .checkpoint import ModelVariant
from .device import to_device
from .sampling import guidance
from .sampling.dmd import dmd_step, euler_step
from .sampling.pyramid import enter_finer_stage, shrink_noise
from .sampling.schedules import (
    StageSchedule, dynamic_shift_mu, pyramid_stage_schedule, single_stage_schedule, stage_tables,
)
from .sampling.unipc import UniPCState
from .step_io import HISTORY_SIZES, LATENT_CHANNELS, LATENT_FRAMES_PER_CHUNK, RequestSpec, UnitPosition, mix_key

# Relative temporal RoPE positions: [anchor | long 16 | mid 2 | last 1 | noisy 9] (spec §2.3).
_POSITIONS = torch.arange(1 + sum(HISTORY_SIZES) + LATENT_FRAMES_PER_CHUNK)
HISTORY_INDICES = {
    "long": _POSITIONS[1:17][None],
    "mid": _POSITIONS[17:19][None],
    "short": torch.stack([_POSITIONS[0], _POSITIONS[19]])[None],
}
NOISY_INDICES = _POSITIONS[20:][None]


@dataclass
class RequestState:
    spec: RequestSpec
    generator: torch.Generator
    prompt_embeddings: dict[str, torch.Tensor]
    """Prompt -> [1, L, text_dim] embeddings in the transformer dtype: every prompt of the
    spec's schedule (a prompt changed mid-video is added by ``ModelRunner.switch_prompts``)."""
    negative_text: torch.Tensor | None
    history: torch.Tensor
    """[1, 16, 19, h, w] fp32: the last 19 latents (long 16, mid 2, last 1); bounded memory."""
    anchor: torch.Tensor | None = None
    """[1, 16, 1, h, w]: the first-frame anchor (first latent, image or first video frame)."""
    chunk_index: int = 0
    stage_index: int = 0
    step_index: int = 0
    latents: torch.Tensor | None = None
    schedule: StageSchedule | None = None
    solver: UniPCState | None = None
    stage_start: torch.Tensor | None = None
    text: torch.Tensor | None = None
    """[1, L, text_dim]: the current chunk's text conditioning (its prompt, or a blend of prompts)."""
    text_key: str | tuple | None = None
    """What ``text`` is cached by in the cross-attention cache (step_io.mix_key)."""
    history_terms: dict[str, torch.Tensor] = field(default_factory=dict)
    model_timesteps: torch.Tensor | None = None
    """[num_steps] fp32 on the device: the transformer timesteps of the current stage."""
    nonfinite: torch.Tensor | None = None
    """0-dim bool on the device: whether any step of the current chunk produced a non-finite
    latent. Accumulated without a host read, checked once when the chunk is decoded."""

    @property
    def stage_done(self) -> bool:
        return self.step_index >= self.schedule.num_steps

    @property
    def is_finished(self) -> bool:
        return self.chunk_index >= self.spec.num_chunks

    def position_for(self, unit: str) -> UnitPosition | None:
        """Where this state is if its next unit is ``unit`` ("begin_chunk", "denoise", "next_stage"
        or "decode"; see UnitPosition); None if that unit cannot come next."""
        if self.schedule is None:  # between chunks
            return UnitPosition(self.chunk_index, 0, 0) if unit == "begin_chunk" else None
        if unit == "denoise" and not self.stage_done:
            return UnitPosition(self.chunk_index, self.stage_index, self.step_index)
        if unit == "next_stage" and self.stage_done:
            return UnitPosition(self.chunk_index, self.stage_index + 1, 0)
        if unit == "decode" and self.stage_done:
            return UnitPosition(self.chunk_index, self.stage_index, self.step_index)
        return None


class ChunkProcedure:
    """The sampling arithmetic of one variant, applied to any request's state."""

    def __init__(self, variant: ModelVariant, patch_size: tuple[int, int, int], compute_dtype: torch.dtype, device):
        self.variant = variant
        self.sampler = variant.sampler
        self.patch_size = patch_size
        self.compute_dtype = compute_dtype
        self.device = torch.device(device)

    # -- chunk start ---------------------------------------------------------------------
    def begin_chunk(self, state: RequestState) -> None:
        self._condition_text(state)
        long, mid, last = state.history.split(HISTORY_SIZES, dim=2)
        prefix = state.anchor
        if prefix is None:  # T2V first chunk: the anchor slot is zeros
            prefix = torch.zeros_like(last)
        state.history_terms = {"short": torch.cat([prefix, last], dim=2), "mid": mid, "long": long}
        spec = state.spec
        shape = (1, LATENT_CHANNELS, LATENT_FRAMES_PER_CHUNK, spec.height // 8, spec.width // 8)
        noise = torch.randn(shape, generator=state.generator, device=state.generator.device, dtype=torch.float32)
        state.latents = to_device(noise, self.device)
        state.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        if self.variant.is_pyramid:
            state.latents = shrink_noise(state.latents, self.sampler.stages)
        self._start_stage(state, 0)

    def _condition_text(self, state: RequestState) -> None:
        """The chunk's text: its prompt's embeddings, or during a transition the weighted sum of
        the prompts' (in fp32, then in the transformer dtype). Fixed when the chunk begins."""
        mix = state.spec.prompt_mix(state.chunk_index)
        if len(mix) == 1:
            state.text = state.prompt_embeddings[mix[0][0]]
        else:
            blend = sum(state.prompt_embeddings[name].float() * weight for name, weight in mix)
            state.text = blend.to(self.compute_dtype)
        state.text_key = mix_key(mix)

    def _num_tokens(self, latents: torch.Tensor) -> int:
        return latents.shape[-1] * latents.shape[-2] * latents.shape[-3] // math.prod(self.patch_size)

    def _start_stage(self, state: RequestState, stage: int) -> None:
        spec, sampler = state.spec, self.sampler
        # mu comes from the latents *before* the stage's upsample (a reference quirk, spec §4.3).
        mu = dynamic_shift_mu(self._num_tokens(state.latents))
        if self.variant.is_pyramid:
            amplify = spec.amplify_first_chunk and state.chunk_index == 0
            state.schedule = pyramid_stage_schedule(sampler, stage, spec.stage_steps[stage], mu, amplify)
        else:
            state.schedule = single_stage_schedule(sampler, spec.stage_steps[0], mu)
        if stage > 0:
            alpha, beta = stage_tables(sampler).renoise_coefficients(stage, sampler.gamma)
            patch = self.patch_size[1:]
            state.latents = enter_finer_stage(
                state.latents, alpha, beta, sampler.gamma, state.generator, self.compute_dtype, patch
            )
        state.stage_index, state.step_index = stage, 0
        state.model_timesteps = to_device(self.model_timesteps(state).to(torch.float32), self.device)
        state.stage_start = state.latents if sampler.kind == "dmd" else None
        state.solver = UniPCState(state.schedule.sigmas, sampler.disable_corrector) if sampler.kind == "unipc" else None

    # -- denoising steps -----------------------------------------------------------------
    def model_timestep(self, state: RequestState) -> float:
        """The timestep fed to the transformer at the request's next step (from the host schedule)."""
        return float(self._as_model_time(state.schedule.timesteps[state.step_index]))

    def model_timesteps(self, state: RequestState) -> torch.Tensor:
        """The transformer timesteps of the whole current stage."""
        return self._as_model_time(state.schedule.timesteps)

    def _as_model_time(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The pyramid pipelines truncate the transformer's timesteps to integers."""
        return timesteps.to(torch.int64).to(timesteps.dtype) if self.variant.is_pyramid else timesteps

    def model_rows(self, state: RequestState) -> list[torch.Tensor]:
        """Text embeddings of this step's forward rows: conditional, then unconditional with CFG."""
        return [state.text, state.negative_text] if state.spec.use_cfg else [state.text]

    def model_row_prompts(self, state: RequestState) -> list:
        """What ``model_rows`` encode, in the same order (what their text keys and values are cached by)."""
        return [state.text_key, state.spec.negative_prompt] if state.spec.use_cfg else [state.text_key]

    def apply_model_output(self, state: RequestState, velocities: list[torch.Tensor]) -> None:
        """Combine the rows' velocities with guidance and take one sampler step."""
        self.sampler_step(state, self.guide(state, velocities))

    def sampler_step(self, state: RequestState, velocity: torch.Tensor) -> None:
        """One step of the request's sampler with its guided velocity."""
        schedule, step = state.schedule, state.step_index
        if self.sampler.kind == "dmd":
            state.latents = dmd_step(schedule, step, velocity, state.latents, state.stage_start)
        elif self.sampler.kind == "euler":
            state.latents = euler_step(schedule, step, velocity, state.latents)
        else:
            state.latents = state.solver.step(velocity, state.latents)
        state.nonfinite |= ~torch.isfinite(state.latents).all()
        state.step_index += 1

    def guide(self, state: RequestState, velocities: list[torch.Tensor]) -> torch.Tensor:
        """The guided velocity from the rows' velocities (conditional, then unconditional)."""
        spec = state.spec
        if not spec.use_cfg:
            return velocities[0]
        cond, uncond = velocities
        if not spec.use_cfg_zero_star:
            return guidance.cfg(cond, uncond, spec.guidance_scale)
        if spec.use_zero_init and state.stage_index == 0 and state.step_index <= spec.zero_steps:
            return cond * 0.0  # CFG-Zero* zero-init: the first steps of stage 0 predict no motion
        return guidance.cfg_zero_star(cond, uncond, spec.guidance_scale)

    # -- stage and chunk ends ------------------------------------------------------------
    def next_stage(self, state: RequestState) -> None:
        """Upsample and re-noise into the next pyramid stage."""
        self._start_stage(state, state.stage_index + 1)

    def finish_chunk(self, state: RequestState) -> torch.Tensor:
        """Record the chunk in the history; returns its normalised latents [1, 16, 9, h, w]."""
        chunk = state.latents
        if state.anchor is None and state.chunk_index == 0:
            state.anchor = chunk[:, :, :1]
        elif state.spec.skip_first_chunk and state.chunk_index == 1:
            state.anchor = chunk[:, :, :1]
        state.history = torch.cat([state.history, chunk], dim=2)[:, :, -sum(HISTORY_SIZES) :]
        state.chunk_index += 1
        state.latents, state.schedule, state.solver, state.stage_start = None, None, None, None
        state.model_timesteps = None
        state.history_terms = {}
        return chunk
