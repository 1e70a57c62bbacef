"""Resolution changes of the 3-stage pyramid (spec §4.3): shrink the noise, grow the latents.

Entering a finer stage, the latents are upsampled (nearest, x2) and re-noised with *block
noise*: per 2x2 block, Gaussian noise correlated so that it sums to about zero inside the
block, which adds detail without moving the block's mean.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from ..device import to_device


def _per_frame(latents: torch.Tensor, resize) -> torch.Tensor:
    """Apply a 2-D resize to every frame of [B, C, T, H, W] latents."""
    batch, channels, frames, height, width = latents.shape
    flat = latents.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
    flat = resize(flat)
    return flat.reshape(batch, frames, channels, *flat.shape[-2:]).permute(0, 2, 1, 3, 4)


def shrink_noise(noise: torch.Tensor, num_stages: int) -> torch.Tensor:
    """Bilinear half-size resizes (times 2, keeping unit variance), once per coarser stage."""
    for _ in range(num_stages - 1):
        height, width = noise.shape[-2] // 2, noise.shape[-1] // 2
        noise = _per_frame(noise, lambda x: F.interpolate(x, size=(height, width), mode="bilinear") * 2)
    return noise


def upsample_nearest(latents: torch.Tensor) -> torch.Tensor:
    height, width = latents.shape[-2] * 2, latents.shape[-1] * 2
    return _per_frame(latents, lambda x: F.interpolate(x, size=(height, width), mode="nearest"))


@lru_cache(maxsize=8)
def block_noise_factor(gamma: float, block_size: int = 4) -> torch.Tensor:
    """Lower Cholesky factor (fp32) of the block covariance (1 + gamma) I - gamma 11^T + 1e-8 I.

    Factorised in fp32 as the reference does. At gamma = 1/3 the covariance is singular for
    2x2 blocks and some fp32 LAPACK builds reject it (the 1e-8 jitter is below fp32
    resolution); then the factor comes from float64, where the jitter keeps it definite.
    Cached: one factorisation per gamma, not one per stage transition. Callers must not modify it.
    """
    for dtype in (torch.float32, torch.float64):
        eye = torch.eye(block_size, dtype=dtype)
        cov = eye * (1 + gamma) - torch.ones(block_size, block_size, dtype=dtype) * gamma + eye * 1e-8
        factor, info = torch.linalg.cholesky_ex(cov)
        if info.item() == 0:
            return factor.float()
    raise ValueError(f"block-noise covariance with gamma={gamma} is not positive definite")


def block_noise(shape, gamma: float, generator: torch.Generator, patch: tuple[int, int] = (2, 2)) -> torch.Tensor:
    """Correlated noise of ``shape`` [B, C, T, H, W], drawn from ``generator`` on its device (the
    request's host generator, so the numbers are those of the reference on any device)."""
    batch, channels, frames, height, width = shape
    ph, pw = patch
    factor = block_noise_factor(gamma, ph * pw)
    num_blocks = batch * channels * frames * (height // ph) * (width // pw)
    z = torch.randn(num_blocks, ph * pw, generator=generator, device=generator.device)
    noise = z @ factor.to(z.device).T
    noise = noise.view(batch, channels, frames, height // ph, width // pw, ph, pw)
    return noise.permute(0, 1, 2, 3, 5, 4, 6).reshape(batch, channels, frames, height, width)


def enter_finer_stage(
    latents: torch.Tensor,
    alpha: float,
    beta: float,
    gamma: float,
    generator: torch.Generator,
    noise_dtype: torch.dtype,
    patch=(2, 2),
) -> torch.Tensor:
    """Upsample to the next stage and re-noise: alpha * up(x) + beta * block_noise.

    The noise is rounded to the transformer's dtype first, as in the reference.
    """
    latents = upsample_nearest(latents)
    noise = to_device(block_noise(latents.shape, gamma, generator, patch).to(noise_dtype), latents.device)
    return alpha * latents + beta * noise
