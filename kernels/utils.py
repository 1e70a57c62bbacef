"""Launch helpers shared by the kernels: block sizes and input checks."""

from __future__ import annotations

import torch

# One program normalises one row; rows wider than this are not supported by a single block.
MAX_FUSED_BYTES = 65536


def block_size(n: int, element_size: int = 4) -> int:
    """The power of two that covers ``n`` elements, checked against the fused-row limit."""
    block = 1 << max(n - 1, 0).bit_length()
    if block * element_size > MAX_FUSED_BYTES * 4:
        raise RuntimeError(f"rows of {n} elements are too wide for one block")
    return block


def num_warps(block: int) -> int:
    return min(max(block // 256, 1), 16)


INT32_MAX = 2**31 - 1


def wide_offsets(rows: int, *row_strides: int) -> bool:
    """Whether a launch over ``rows`` rows must compute its element offsets in int64.

    Offsets are ``row * stride + column``. Triton computes them in int32 unless told otherwise,
    which wraps silently past 2^31 - 1: with q and k as slices of the fused qkv (row stride
    15,360) that happens from 139,811 rows, i.e. 13 stage-2 rows (11,040 tokens each) of the 14B
    model in one forward. Below the limit the cheaper int32 arithmetic is kept.
    """
    return rows * max(row_strides) > INT32_MAX


def rows_view(x: torch.Tensor, name: str) -> torch.Tensor:
    """x as [rows, width] with unit stride along the width; rows may be strided (no copy)."""
    if x.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous along its last dimension, got strides {tuple(x.stride())}")
    if x.ndim == 2:
        return x
    flat = x.reshape(-1, x.shape[-1])  # a view when the leading dimensions are uniform
    return flat


def check_table(table: torch.Tensor, width: int, name: str) -> None:
    if table.ndim != 2 or table.shape[1] != width or table.stride(1) != 1:
        raise ValueError(f"{name} must be [rows, {width}] and contiguous along its last dimension, "
                         f"got shape {tuple(table.shape)} and strides {tuple(table.stride())}")
    if table.dtype != torch.float32:
        raise ValueError(f"{name} must be float32 (modulation math is fp32), got {table.dtype}")


def check_index(index: torch.Tensor, rows: int, table_rows: int, name: str = "index") -> None:
    if index.ndim != 1 or index.numel() != rows or index.dtype != torch.int32:
        raise ValueError(f"{name} must be int32 [{rows}], got {index.dtype} {tuple(index.shape)}")


try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

if triton is not None:

    @triton.jit
    def row_id(WIDE: tl.constexpr):
        """This program's row, as int64 when the launch's offsets need it (see ``wide_offsets``)."""
        row = tl.program_id(0)
        if WIDE:
            row = row.to(tl.int64)
        return row

    @triton.jit
    def centred_row(X, row, stride, N, eps, BLOCK: tl.constexpr):
        """Load row ``row`` of X as fp32; return (x - mean, 1 / std, column mask): LayerNorm statistics."""
        cols = tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(X + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / N
        centred = tl.where(mask, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / N + eps)
        return centred, rstd, mask
