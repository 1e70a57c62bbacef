"""Timestep and text conditioning embeddings (spec §2.4)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .linear import Linear, gelu_tanh, per_sample


def sinusoidal_features(timestep: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(t f_k), sin(t f_k)] with f_k = max_period^(-k / (dim/2)); fp32, [B, dim]."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half
    angles = timestep.float()[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimeConditioning(NamedTuple):
    temb: torch.Tensor
    """[B, D] time embedding in the compute dtype (drives the output norm)."""
    modulation: torch.Tensor
    """[B, 6, D] shift/scale/gate for self-attention and FFN, in the compute dtype."""


class TimeEmbedding(nn.Module):
    """Sinusoid -> MLP (the fp32 ``time_embedder``) -> SiLU -> Linear to six modulation vectors."""

    def __init__(self, freq_dim: int, dim: int, batch_invariant: bool = False):
        super().__init__()
        self.freq_dim = freq_dim
        self.linear_1 = Linear(freq_dim, dim, batch_invariant)
        self.linear_2 = Linear(dim, dim, batch_invariant)
        self.time_proj = Linear(dim, 6 * dim, batch_invariant)
        self.batch_invariant = batch_invariant

    def forward(self, timestep: torch.Tensor, compute_dtype: torch.dtype) -> TimeConditioning:
        features = sinusoidal_features(timestep, self.freq_dim).to(self.linear_1.weight.dtype)
        temb = self.linear_2(per_sample(F.silu, self.linear_1(features), self.batch_invariant)).to(compute_dtype)
        modulation = self.time_proj(per_sample(F.silu, temb, self.batch_invariant)).unflatten(-1, (6, -1))
        return TimeConditioning(temb, modulation)


class TextProjection(nn.Module):
    """Linear -> GELU(tanh) -> Linear from the text encoder width to the model width."""

    def __init__(self, text_dim: int, dim: int, batch_invariant: bool = False):
        super().__init__()
        self.linear_1 = Linear(text_dim, dim, batch_invariant)
        self.linear_2 = Linear(dim, dim, batch_invariant)
        self.batch_invariant = batch_invariant

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.linear_2(gelu_tanh(self.linear_1(text), self.batch_invariant))
