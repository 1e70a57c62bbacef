"""Timestep and sigma schedules of the Helios samplers (spec §4.1, §4.3, §4.4).

Pure functions of the checkpoint's scheduler config: nothing here holds per-request state.
The arithmetic follows the reference step by step (numpy float64 grids, torch float64
sigmas), because the schedules feed every later number of a seed-for-seed reproduction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from ..checkpoint import SamplerScheduleConfig

__all__ = ["SamplerScheduleConfig", "stage_tables"]

# Constants of the dynamic shift (calculate_shift in the reference pipelines).
BASE_SEQ_LEN, MAX_SEQ_LEN, BASE_SHIFT, MAX_SHIFT = 256, 4096, 0.5, 1.15
# The reference ends the last stage's ratio just below one.
LAST_STAGE_END_RATIO = 0.9999999999999999


def dynamic_shift_mu(num_tokens: int) -> float:
    """mu of the dynamic shift for a noisy chunk of ``num_tokens`` patch tokens."""
    slope = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ_LEN - BASE_SEQ_LEN)
    intercept = BASE_SHIFT - slope * BASE_SEQ_LEN
    return num_tokens * slope + intercept


def time_shift(sigmas: torch.Tensor, mu: float, kind: str) -> torch.Tensor:
    """Shift sigmas toward 1 (exponential: factor e^mu; linear: factor mu). sigma=0 stays 0."""
    if kind not in ("exponential", "linear"):
        raise ValueError(f"time_shift_type must be 'exponential' or 'linear', got {kind!r}")
    factor = math.exp(mu) if kind == "exponential" else mu
    return factor / (factor + (1 / sigmas - 1))


@dataclass(frozen=True)
class StageTables:
    """Per-stage start sigmas and global timestep ranges, built once per config (spec §4.3)."""

    original_start_sigmas: tuple[float, ...]
    timestep_grids: tuple[torch.Tensor, ...]  # float64, 1000 points from T_max toward T_min

    @classmethod
    def build(cls, config: SamplerScheduleConfig) -> StageTables:
        n = config.num_train_timesteps
        sigmas = 1.0 - np.linspace(1, 1 / n, n + 1)
        sigmas = np.flip(config.shift * sigmas / (1 + (config.shift - 1) * sigmas))[:-1].copy()
        timesteps = sigmas * n

        original_starts, distances = [], []
        for s in range(config.stages):
            start = sigmas[max(int(config.stage_range[s] * n), 0)].item()
            end_index = min(int(config.stage_range[s + 1] * n), n)
            end = sigmas[end_index].item() if end_index < n else 0.0
            original_starts.append(start)
            if s > 0:  # the start is re-noised with block noise, which moves it (spec §4.3)
                signal = 1 - start
                start = 1 - signal / (math.sqrt(1 + 1 / config.gamma) * (1 - signal) + signal)
            distances.append(start - end)

        total = sum(distances)
        grids = []
        for s in range(config.stages):
            start_ratio = sum(distances[:s]) / total if s > 0 else 0.0
            end_ratio = LAST_STAGE_END_RATIO if s == config.stages - 1 else sum(distances[: s + 1]) / total
            t_max = min(timesteps[int(start_ratio * n)], 999)
            t_min = timesteps[min(int(end_ratio * n), n - 1)]
            grids.append(torch.from_numpy(np.linspace(t_max, t_min, n + 1)[:-1]))
        return cls(tuple(original_starts), tuple(grids))

    def renoise_coefficients(self, stage: int, gamma: float) -> tuple[float, float]:
        """(alpha, beta) of ``x = alpha * upsampled + beta * block_noise`` entering ``stage``."""
        signal = 1 - self.original_start_sigmas[stage]
        alpha = 1 / (math.sqrt(1 + 1 / gamma) * (1 - signal) + signal)
        beta = alpha * (1 - signal) / math.sqrt(gamma)
        return alpha, beta


@dataclass(frozen=True)
class StageSchedule:
    timesteps: torch.Tensor
    """float64 [num_steps]: the model's timestep at each step (pyramid stages truncate to int)."""
    sigmas: torch.Tensor
    """float64 [num_steps + 1], ending in 0."""

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


@cache
def stage_tables(config: SamplerScheduleConfig) -> StageTables:
    """The config's StageTables, built once per config."""
    return StageTables.build(config)


def single_stage_schedule(config: SamplerScheduleConfig, num_steps: int, mu: float) -> StageSchedule:
    """Helios-Base: one stage over the whole noise range (spec §4.2)."""
    raw = np.linspace(0.999, 0.0, num_steps + 1)[:-1]
    sigmas = torch.cat([torch.from_numpy(raw), torch.zeros(1)])
    n = config.num_train_timesteps
    if not config.use_dynamic_shifting:
        return StageSchedule(torch.from_numpy(raw * n), sigmas)
    sigmas = time_shift(sigmas, mu, config.time_shift_type)
    return StageSchedule(sigmas[:-1] * n, sigmas)


def pyramid_stage_schedule(
    config: SamplerScheduleConfig, stage: int, num_steps: int, mu: float, amplify: bool = False
) -> StageSchedule:
    """One pyramid stage: local sigmas from 0.999, mapped into the stage's timestep range.

    The DMD sampler builds one more point (2n+1 when amplifying the first chunk) and drops the
    last timestep and the second-to-last sigma, so it still makes n model calls (spec §4.4).
    """
    grid = stage_tables(config).timestep_grids[stage]
    num_points = num_steps
    if config.kind == "dmd":
        num_points = 2 * num_steps + 1 if amplify else num_steps + 1
    timesteps = torch.from_numpy(np.linspace(grid[0].item(), grid[-1].item(), num_points))
    local_grid = np.linspace(0.999, 0, config.num_train_timesteps + 1)[:-1]  # the same for every stage
    local = torch.from_numpy(np.linspace(local_grid[0], local_grid[-1], num_points))
    sigmas = torch.cat([local, torch.zeros(1)])
    if config.kind == "dmd":
        timesteps = timesteps[:-1]
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    if config.use_dynamic_shifting:
        sigmas = time_shift(sigmas, mu, config.time_shift_type)
        timesteps = grid.min() + sigmas[:-1] * (grid.max() - grid.min())
    return StageSchedule(timesteps, sigmas)
