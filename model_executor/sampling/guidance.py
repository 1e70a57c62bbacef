"""Classifier-free guidance and CFG-Zero* (spec §4.2, §4.3)."""

from __future__ import annotations

import torch


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    return uncond + scale * (cond - uncond)


def cfg_zero_star(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """CFG with the unconditional branch rescaled by its optimal projection onto the conditional.

    alpha* = <v_c, v_u> / (|v_u|^2 + 1e-8) per sample, computed in fp32.
    """
    batch = cond.shape[0]
    cond_flat = cond.reshape(batch, -1).float()
    uncond_flat = uncond.reshape(batch, -1).float()
    dot = torch.sum(cond_flat * uncond_flat, dim=1, keepdim=True)
    alpha = dot / (torch.sum(uncond_flat**2, dim=1, keepdim=True) + 1e-8)
    alpha = alpha.view(batch, *([1] * (cond.ndim - 1))).to(cond.dtype)
    return uncond * alpha + scale * (cond - uncond * alpha)
