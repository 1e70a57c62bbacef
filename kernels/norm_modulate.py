"""LayerNorm without affine fused with AdaLN modulation: ``LN(x) * (1 + scale) + shift``.

The norm1 / norm3 / norm_out paths of every Helios block. Math in fp32, output in the
activation dtype. Modulation is per token but takes only a few distinct values (history
tokens use timestep 0, noisy tokens the request's timestep), so shift and scale are small
fp32 tables and each token row carries the index of its table row: the kernel reads
[rows, D] activations and a [rows] index instead of a [rows, D] modulation tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference works without triton
    triton = None


def norm_modulate_ref(x, shift, scale, index, eps: float) -> torch.Tensor:
    """Plain PyTorch: x [..., D]; shift, scale [R, D] fp32; index [rows] int32 into them."""
    rows = x.reshape(-1, x.shape[-1]).float()
    normed = F.layer_norm(rows, (rows.shape[-1],), eps=eps)
    out = normed * (1 + scale[index.long()]) + shift[index.long()]
    return out.to(x.dtype).reshape(x.shape)


if triton is not None:
    from .utils import centred_row, row_id

    @triton.jit
    def _norm_modulate_kernel(
        X,  # activations [rows, N], row stride stride_x
        Y,  # output [rows, N], contiguous
        SHIFT,  # fp32 table [R, N]
        SCALE,  # fp32 table [R, N]
        INDEX,  # int32 [rows]: the table row of each activation row
        stride_x,
        stride_table,
        N,
        eps,
        BLOCK: tl.constexpr,
        WIDE: tl.constexpr,  # int64 offsets (utils.wide_offsets)
    ):
        # Map the program id to the row of X and Y it computes.
        row = row_id(WIDE)
        cols = tl.arange(0, BLOCK)
        centred, rstd, mask = centred_row(X, row, stride_x, N, eps, BLOCK)
        entry = tl.load(INDEX + row)
        shift = tl.load(SHIFT + entry * stride_table + cols, mask=mask, other=0.0)
        scale = tl.load(SCALE + entry * stride_table + cols, mask=mask, other=0.0)
        y = centred * rstd * (1.0 + scale) + shift
        tl.store(Y + row * N + cols, y.to(Y.dtype.element_ty), mask=mask)


def norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, index: torch.Tensor,
                  eps: float) -> torch.Tensor:
    from .utils import block_size, check_index, check_table, num_warps, rows_view, wide_offsets

    rows = rows_view(x, "x")
    width = rows.shape[1]
    check_table(shift, width, "shift")
    check_table(scale, width, "scale")
    if shift.shape != scale.shape:
        raise ValueError(f"shift {tuple(shift.shape)} and scale {tuple(scale.shape)} differ")
    check_index(index, rows.shape[0], shift.shape[0])
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    block = block_size(width)
    _norm_modulate_kernel[(rows.shape[0],)](rows, out, shift, scale, index, rows.stride(0), shift.stride(0), width,
                                           eps, BLOCK=block, WIDE=wide_offsets(rows.shape[0], rows.stride(0), width),
                                           num_warps=num_warps(block))
    return out.reshape(x.shape)
