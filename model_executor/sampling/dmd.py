"""The DMD pyramid sampler of Helios-Distilled (spec §4.4).

Each step turns the velocity into an x0 estimate, then re-noises that estimate toward the
stage's *start tensor* (not fresh noise) at the next step's sigma; the last step of a stage
returns x0 itself. Sigmas are looked up by nearest timestep and applied in float64.

The schedules live on the host; their sigmas meet the device latents only as 0-dim tensors,
which PyTorch passes to device kernels as scalars (a CPU tensor with dims would not run on a
GPU, and copying it up would stall the host).
"""

from __future__ import annotations

import torch

from .schedules import StageSchedule


def _sigma_at(schedule: StageSchedule, timestep: torch.Tensor) -> torch.Tensor:
    """The schedule's sigma at the entry whose timestep is nearest to the (integer) ``timestep``."""
    index = torch.argmin((schedule.timesteps.double() - timestep.double()).abs())
    return schedule.sigmas.double()[index]


def dmd_step(
    schedule: StageSchedule, step: int, velocity: torch.Tensor, sample: torch.Tensor, start: torch.Tensor
) -> torch.Tensor:
    """One DMD step of one sample (batch of one). ``start`` is the stage's initial latent."""
    # The reference looks sigmas up with timesteps truncated to integers.
    timestep = schedule.timesteps[step].to(torch.int64)
    sigma = _sigma_at(schedule, timestep)
    x0 = (sample.double() - sigma * velocity.double()).to(velocity.dtype)
    if step == schedule.num_steps - 1:
        return x0
    next_sigma = _sigma_at(schedule, schedule.timesteps[step + 1].to(torch.int64))  # 0-dim: a scalar
    # float64 like the reference, whose 5-D sigma promoted the arithmetic; a 0-dim one would not.
    return ((1 - next_sigma) * x0.double() + next_sigma * start.double()).type_as(start)


def euler_step(schedule: StageSchedule, step: int, velocity: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """Plain flow-matching Euler (``scheduler_type="euler"``)."""
    delta = schedule.sigmas[step + 1] - schedule.sigmas[step]
    return (sample.to(torch.float32) + delta * velocity).to(velocity.dtype)
