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
    from .utils import centred_rows, row_block, table_rows

    @triton.jit
    def _norm_modulate_kernel(
        X,  # activations [rows, N], row stride stride_x
        Y,  # output [rows, N], contiguous
        SHIFT,  # fp32 table [R, N]
        SCALE,  # fp32 table [R, N]
        INDEX,  # int32 [rows]: the table row of each activation row
        n_rows,
        stride_x,
        stride_table,
        N,
        eps,
        BLOCK: tl.constexpr,
        ROWS: tl.constexpr,  # rows per program (utils.launch_config)
        WIDE: tl.constexpr,  # int64 offsets (utils.wide_offsets)
    ):
        # This program's ROWS consecutive rows of X and Y; the last program's tail is masked.
        rows, row_mask = row_block(n_rows, ROWS, WIDE)
        cols = tl.arange(0, BLOCK)
        centred, rstd, mask = centred_rows(X, rows, row_mask, stride_x, N, eps, BLOCK)
        entries = tl.load(INDEX + rows, mask=row_mask, other=0)
        shift = table_rows(SHIFT, entries, row_mask, stride_table, cols, cols < N, ROWS)
        scale = table_rows(SCALE, entries, row_mask, stride_table, cols, cols < N, ROWS)
        y = centred * rstd * (1.0 + scale) + shift
        tl.store(Y + (rows * N)[:, None] + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


def norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, index: torch.Tensor,
                  eps: float) -> torch.Tensor:
    from .utils import check_index, check_table, launch_config, program_count, rows_view, wide_offsets

    rows = rows_view(x, "x")
    n_rows, width = rows.shape
    check_table(shift, width, "shift")
    check_table(scale, width, "scale")
    if shift.shape != scale.shape:
        raise ValueError(f"shift {tuple(shift.shape)} and scale {tuple(scale.shape)} differ")
    check_index(index, n_rows, shift.shape[0])
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    config = launch_config(width, x.element_size())
    programs = program_count(n_rows, config)
    # Offsets of the masked tail rows are computed too: the padded count decides int64.
    wide = wide_offsets(programs * config.rows_per_program, rows.stride(0), width)
    _norm_modulate_kernel[(programs,)](rows, out, shift, scale, index, n_rows, rows.stride(0), shift.stride(0), width,
                                       eps, BLOCK=config.block, ROWS=config.rows_per_program, WIDE=wide,
                                       num_warps=config.num_warps)
    return out.reshape(x.shape)
