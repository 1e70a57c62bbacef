"""Gated residual add: ``h + gate * y`` in fp32, stored in the residual stream's dtype.

After self-attention and the FFN of every block. Gates are per token, given as a small fp32
table and a per-row index (see norm_modulate.py). Fusing saves the fp32 temporaries the
eager form materialises: at 14B geometry (11,040 x 5,120) each is 226 MB per forward row.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None


def gated_residual_ref(h, y, gate, index) -> torch.Tensor:
    """Plain PyTorch: h, y [..., D]; gate [R, D] fp32; index [rows] int32."""
    rows_h = h.reshape(-1, h.shape[-1]).float()
    rows_y = y.reshape(-1, y.shape[-1]).float()
    return (rows_h + rows_y * gate[index.long()]).to(h.dtype).reshape(h.shape)


if triton is not None:
    from .utils import row_block, table_rows

    @triton.jit
    def _gated_residual_kernel(
        H,  # residual stream [rows, N], row stride stride_h
        Y,  # branch output [rows, N], row stride stride_y
        OUT,  # [rows, N] contiguous, dtype of H
        GATE,  # fp32 table [R, N]
        INDEX,  # int32 [rows]
        n_rows,
        stride_h,
        stride_y,
        stride_gate,
        N,
        BLOCK: tl.constexpr,  # a tile of the row: program (i, j) covers columns [j * BLOCK, (j + 1) * BLOCK)
        ROWS: tl.constexpr,  # rows per program (utils.launch_config)
        WIDE: tl.constexpr,  # int64 offsets (utils.wide_offsets)
    ):
        rows, row_mask = row_block(n_rows, ROWS, WIDE)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        col_mask = cols < N
        mask = row_mask[:, None] & col_mask[None, :]
        h = tl.load(H + (rows * stride_h)[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        y = tl.load(Y + (rows * stride_y)[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        entries = tl.load(INDEX + rows, mask=row_mask, other=0)
        gate = table_rows(GATE, entries, row_mask, stride_gate, cols, col_mask, ROWS)
        tl.store(OUT + (rows * N)[:, None] + cols[None, :], (h + y * gate).to(OUT.dtype.element_ty), mask=mask)


def gated_residual(h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    from .utils import check_index, check_table, launch_config, program_count, rows_view, wide_offsets

    rows_h, rows_y = rows_view(h, "h"), rows_view(y, "y")
    if rows_h.shape != rows_y.shape:
        raise ValueError(f"h {tuple(h.shape)} and y {tuple(y.shape)} differ")
    n_rows, width = rows_h.shape
    check_table(gate, width, "gate")
    check_index(index, n_rows, gate.shape[0])
    out = torch.empty(rows_h.shape, dtype=h.dtype, device=h.device)
    config = launch_config(width, h.element_size(), whole_row=False)  # elementwise: tiles of the row
    programs = program_count(n_rows, config)
    wide = wide_offsets(programs * config.rows_per_program, rows_h.stride(0), rows_y.stride(0), width)
    grid = (programs, triton.cdiv(width, config.block))
    _gated_residual_kernel[grid](rows_h, rows_y, out, gate, index, n_rows, rows_h.stride(0), rows_y.stride(0),
                                 gate.stride(0), width, BLOCK=config.block, ROWS=config.rows_per_program, WIDE=wide,
                                 num_warps=config.num_warps)
    return out.reshape(h.shape)
