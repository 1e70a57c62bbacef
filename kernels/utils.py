"""Launch helpers shared by the kernels: launch configurations and input checks."""

from __future__ import annotations

from typing import NamedTuple

import torch

# One program normalises whole rows; rows wider than this are not supported by a single block.
MAX_FUSED_BYTES = 65536

PROGRAM_ELEMENTS = 2048
"""Elements a program of narrow rows handles (rows x block). One row of 64 values is a program
of one warp holding two values a thread, and each program pays its own index and table loads;
packing rows up to this size gives several rows a program at widths up to 1024 and one row from
2048 up (the 14B width, 5120, is 8192 lanes on its own). Chosen by that arithmetic, not measured
on a GPU."""

MAX_ROWS_PER_PROGRAM = 16
"""Caps the rows of the narrowest widths (64: 16 rows, not 32), so a launch over a few rows
still spreads over several programs."""

ELEMENTWISE_TILE = 1024
"""Elementwise kernels (no statistics over the row) tile a row by at most this many columns: the
14B width is exactly 5 tiles, where a whole-row block of 8192 lanes would leave 3072 idle."""

ELEMENTS_PER_THREAD = 16
"""fp32 values a thread holds per row-sized tensor. The norms keep about four such tensors live
(the row, its centred copy, scale and shift): 64 registers a thread, well inside the 255 of an
H100 thread without spills (tests/test_kernel_launch.py compiles each kernel for sm_90 and checks)."""

VECTOR_BYTES = 16
"""The widest load a thread issues (ld.global.v4): a thread should own at least one such vector,
8 bf16 or 4 fp32 values, or the loads narrow."""

MAX_WARPS = 16


class LaunchConfig(NamedTuple):
    block: int
    """Columns a program covers: a power of two (Triton's blocks are)."""
    rows_per_program: int
    """Consecutive rows a program handles (a power of two); the last program masks the rows past the end."""
    num_warps: int


def block_size(n: int, element_size: int = 4) -> int:
    """The power of two that covers ``n`` elements, checked against the fused-row limit."""
    block = 1 << max(n - 1, 0).bit_length()
    if block * element_size > MAX_FUSED_BYTES * 4:
        raise RuntimeError(f"rows of {n} elements are too wide for one block")
    return block


def launch_config(width: int, element_size: int, *, whole_row: bool = True,
                  max_rows_per_program: int = MAX_ROWS_PER_PROGRAM) -> LaunchConfig:
    """The launch of a row-wise kernel over rows of ``width`` elements of ``element_size`` bytes.

    * block: the next power of two of the width for kernels that need the whole row at once
      (norm statistics); elementwise kernels (``whole_row=False``) tile it by ELEMENTWISE_TILE.
    * rows_per_program: enough rows to reach PROGRAM_ELEMENTS (several at widths up to 1024,
      one from 2048), at most ``max_rows_per_program``. Consecutive rows mostly share their
      modulation table row (a sample's history, then its noisy tokens), so a program of several
      rows reads that row once.
    * num_warps: ELEMENTS_PER_THREAD fp32 values per thread, 1 to 16 warps, and never so many that
      a thread's share is narrower than a 16-byte vector. At 5120 (block 8192, one fp32 row is
      20 KiB, 32 KiB of lanes): 16 warps of 512 threads, 16 values each; at 64: 16 rows, 2 warps.
    """
    block = block_size(width, element_size) if whole_row else min(block_size(width, element_size), ELEMENTWISE_TILE)
    rows = min(max(PROGRAM_ELEMENTS // block, 1), max_rows_per_program)
    rows = 1 << (rows.bit_length() - 1)  # a power of two: it is a tl.arange extent
    elements = rows * block
    warps = min(max(elements // (32 * ELEMENTS_PER_THREAD), 1), MAX_WARPS)
    widest = max(elements * element_size // (32 * VECTOR_BYTES), 1)  # warps at which a thread holds one vector
    warps = min(warps, 1 << (widest.bit_length() - 1))
    return LaunchConfig(block, rows, warps)


def program_count(rows: int, config: LaunchConfig) -> int:
    """Programs along the rows: the last one masks the rows past ``rows``."""
    return -(-rows // config.rows_per_program)


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
    def row_block(n_rows, ROWS: tl.constexpr, WIDE: tl.constexpr):
        """This program's ROWS consecutive rows [ROWS] (int64 when ``wide_offsets`` says) and their mask."""
        first_row = tl.program_id(0)
        if WIDE:
            first_row = first_row.to(tl.int64)
        first_row = first_row * ROWS
        rows = first_row + tl.arange(0, ROWS)
        return rows, rows < n_rows

    @triton.jit
    def centred_rows(X, rows, row_mask, stride, N, eps, BLOCK: tl.constexpr):
        """Load ``rows`` of X as fp32 [ROWS, BLOCK]; return (x - mean, 1 / std [ROWS, 1], mask):
        LayerNorm statistics, per row."""
        cols = tl.arange(0, BLOCK)
        mask = row_mask[:, None] & (cols < N)[None, :]
        x = tl.load(X + (rows * stride)[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / N
        centred = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / N + eps)
        return centred, rstd[:, None], mask

    @triton.jit
    def table_rows(TABLE, entries, row_mask, stride_table, cols, col_mask, ROWS: tl.constexpr):
        """The fp32 table rows [ROWS, BLOCK] of ``entries`` [ROWS] (int32), over columns ``cols``.

        Consecutive token rows mostly share their entry (a sample's history tokens, then its
        noisy ones), so the program's lowest entry is read once and broadcast to every row that
        has it; only the other rows (in a program that straddles a boundary) read their own.
        Masked-off lanes move no memory. With one row a program there is nothing to share: the
        row's own table row is read without the extra, all-masked load.
        """
        if ROWS == 1:  # the row exists: a program is only launched for a row
            entry = tl.sum(entries, axis=0)
            return tl.load(TABLE + entry * stride_table + cols, mask=col_mask, other=0.0)[None, :]
        mask = row_mask[:, None] & col_mask[None, :]
        lowest = tl.min(tl.where(row_mask, entries, 2147483647), axis=0)
        shared = tl.load(TABLE + lowest * stride_table + cols, mask=col_mask, other=0.0)
        is_shared = (entries == lowest)[:, None]
        others = tl.load(TABLE + (entries * stride_table)[:, None] + cols[None, :], mask=mask & ~is_shared, other=0.0)
        return tl.where(is_shared, shared[None, :], others)
