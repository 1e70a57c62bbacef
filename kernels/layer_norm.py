"""Affine LayerNorm (the norm2 before cross-attention): fp32 math, output in the input dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None


def layer_norm_ref(x, weight, bias, eps: float) -> torch.Tensor:
    return F.layer_norm(x.float(), (x.shape[-1],), weight.float(), bias.float(), eps).to(x.dtype)


if triton is not None:
    from .utils import centred_row, row_id

    @triton.jit
    def _layer_norm_kernel(
        X,  # [rows, N], row stride stride_x
        Y,  # [rows, N] contiguous
        W,  # [N] gain
        B,  # [N] bias
        stride_x,
        N,
        eps,
        BLOCK: tl.constexpr,
        WIDE: tl.constexpr,  # int64 offsets (utils.wide_offsets)
    ):
        row = row_id(WIDE)
        cols = tl.arange(0, BLOCK)
        centred, rstd, mask = centred_row(X, row, stride_x, N, eps, BLOCK)
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + row * N + cols, (centred * rstd * w + b).to(Y.dtype.element_ty), mask=mask)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    from .utils import block_size, num_warps, rows_view, wide_offsets

    rows = rows_view(x, "x")
    width = rows.shape[1]
    if weight.shape != (width,) or bias.shape != (width,):
        raise ValueError(f"weight and bias must be [{width}], got {tuple(weight.shape)} and {tuple(bias.shape)}")
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    block = block_size(width)
    _layer_norm_kernel[(rows.shape[0],)](rows, out, weight.contiguous(), bias.contiguous(), rows.stride(0), width, eps,
                                         BLOCK=block, WIDE=wide_offsets(rows.shape[0], rows.stride(0), width),
                                         num_warps=num_warps(block))
    return out.reshape(x.shape)
