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
    from .utils import centred_rows, row_block

    @triton.jit
    def _layer_norm_kernel(
        X,  # [rows, N], row stride stride_x
        Y,  # [rows, N] contiguous
        W,  # [N] gain
        B,  # [N] bias
        n_rows,
        stride_x,
        N,
        eps,
        BLOCK: tl.constexpr,
        ROWS: tl.constexpr,  # rows per program (utils.launch_config)
        WIDE: tl.constexpr,  # int64 offsets (utils.wide_offsets)
    ):
        rows, row_mask = row_block(n_rows, ROWS, WIDE)
        cols = tl.arange(0, BLOCK)
        centred, rstd, mask = centred_rows(X, rows, row_mask, stride_x, N, eps, BLOCK)
        # Gain and bias are read once per program, for all of its rows.
        w = tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32)
        b = tl.load(B + cols, mask=cols < N, other=0.0).to(tl.float32)
        y = centred * rstd * w[None, :] + b[None, :]
        tl.store(Y + (rows * N)[:, None] + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    from .utils import launch_config, program_count, rows_view, wide_offsets

    rows = rows_view(x, "x")
    n_rows, width = rows.shape
    if weight.shape != (width,) or bias.shape != (width,):
        raise ValueError(f"weight and bias must be [{width}], got {tuple(weight.shape)} and {tuple(bias.shape)}")
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    config = launch_config(width, x.element_size())
    programs = program_count(n_rows, config)
    wide = wide_offsets(programs * config.rows_per_program, rows.stride(0), width)  # the masked tail included
    _layer_norm_kernel[(programs,)](rows, out, weight.contiguous(), bias.contiguous(), n_rows, rows.stride(0), width,
                                    eps, BLOCK=config.block, ROWS=config.rows_per_program, WIDE=wide,
                                    num_warps=config.num_warps)
    return out.reshape(x.shape)
