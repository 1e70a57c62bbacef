"""Normalisation and AdaLN modulation with the reference's fp32 islands (spec §2.5).

A Helios sequence has two modulation segments: the history tokens (modulated with
timestep 0) followed by the noisy tokens (modulated with the request's timestep). Rather
than materialising a per-token [B, N, 6, D] modulation tensor as the reference does, the
per-segment values are applied to the two slices of the sequence; every element sees
exactly the same arithmetic.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class SegmentParams(NamedTuple):
    """One modulation quantity for both token segments, each [B or 1, 1, D] fp32."""

    history: torch.Tensor
    noisy: torch.Tensor


def layer_norm_fp32(x: torch.Tensor, eps: float, weight=None, bias=None) -> torch.Tensor:
    """LayerNorm computed in fp32; returns fp32."""
    weight = weight.float() if weight is not None else None
    bias = bias.float() if bias is not None else None
    return F.layer_norm(x.float(), (x.shape[-1],), weight, bias, eps)


def _per_segment(x: torch.Tensor, num_history: int, fn) -> torch.Tensor:
    if num_history == 0:
        return fn(x, "noisy")
    return torch.cat([fn(x[:, :num_history], "history"), fn(x[:, num_history:], "noisy")], dim=1)


def modulated_layer_norm(
    x: torch.Tensor, shift: SegmentParams, scale: SegmentParams, num_history: int, eps: float
) -> torch.Tensor:
    """``LayerNorm(x) * (1 + scale) + shift`` in fp32, returned in x's dtype."""
    normed = layer_norm_fp32(x, eps)

    def apply(part, segment):
        return part * (1 + getattr(scale, segment)) + getattr(shift, segment)

    return _per_segment(normed, num_history, apply).type_as(x)


def gated_residual(h: torch.Tensor, y: torch.Tensor, gate: SegmentParams, num_history: int) -> torch.Tensor:
    """``h + gate * y`` in fp32, stored in h's dtype (the residual stream dtype)."""

    def apply(part, segment):
        return part * getattr(gate, segment)

    gated = _per_segment(y.float(), num_history, apply)
    return (h.float() + gated).type_as(h)


class AffineLayerNorm(nn.Module):
    """LayerNorm with weight and bias, computed in fp32 (the cross-attention input norm).

    ``ops`` (layers/ops.py) supplies the implementation: native PyTorch or the Triton kernel.
    """

    def __init__(self, dim: int, eps: float, ops):
        super().__init__()
        self.eps = eps
        self.ops = ops
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.affine_layer_norm(x, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """RMSNorm with a gain over the last axis; q/k norms span all heads (width = inner dim)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
