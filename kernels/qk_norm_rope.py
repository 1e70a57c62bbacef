"""q/k RMSNorm across all heads fused with the 3-D RoPE rotation, q and k in one launch.

Helios normalises q and k over the full hidden width (all heads jointly, with a gain), then
rotates interleaved channel pairs by per-token angles (the pooled tables of mid/long history
tokens included). The eager form reads and writes q and k three times (norm, reshape, rotate)
and materialises fp32 copies; here each row is read once and written once. Rows of q and k
may be strided (they are column slices of the fused qkv projection). A program sees its row as
a [heads, head_dim] block, so each head's channels load and store as contiguous vectors and
the token's angle row is read once for all heads; even and odd channels are split in registers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None


def rotate_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Rotate interleaved pairs of x [rows, heads * hd] by per-row angles cos/sin [rows, hd / 2] (fp32)."""
    pairs = x.float().unflatten(-1, (num_heads, -1, 2))
    even, odd = pairs.unbind(-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(1)


def qk_norm_rope_ref(q, k, weight_q, weight_k, cos, sin, num_heads: int, eps: float):
    """Plain PyTorch. q, k [rows, D]; cos, sin [table_rows, hd/2] fp32, row r uses table row r % table_rows."""
    rows = q.shape[0]
    table = torch.arange(rows, device=q.device) % cos.shape[0]
    c, s = cos[table], sin[table]
    out = []
    for x, weight in ((q, weight_q), (k, weight_k)):
        normed = F.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps)
        out.append(rotate_ref(normed, c, s, num_heads).to(x.dtype))
    return out[0], out[1]


if triton is not None:
    from .utils import row_id

    @triton.jit
    def _qk_norm_rope_kernel(
        Q, K,  # inputs [rows, D], row strides stride_q / stride_k, unit column stride
        QO, KO,  # outputs [rows, D] contiguous
        WQ, WK,  # RMSNorm gains [D]
        COS, SIN,  # fp32 angle tables [table_rows, HEAD_DIM / 2]
        stride_q,
        stride_k,
        table_rows,
        eps,
        NUM_HEADS: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        HEADS_BLOCK: tl.constexpr,  # powers of two covering NUM_HEADS and HEAD_DIM
        HEAD_BLOCK: tl.constexpr,
        WIDE: tl.constexpr,  # int64 offsets (utils.wide_offsets)
    ):
        # Program (row, 0) handles the row of q, program (row, 1) the row of k.
        row = row_id(WIDE)
        if tl.program_id(1) == 0:
            x_row, out_row, gain, stride = Q, QO, WQ, stride_q
        else:
            x_row, out_row, gain, stride = K, KO, WK, stride_k
        # The row as a [heads, head_dim] block: each head's channels are contiguous in memory,
        # so the loads and stores are full-width vectors (no stride-2 even/odd gathers).
        head = tl.arange(0, HEADS_BLOCK)[:, None]
        channel = tl.arange(0, HEAD_BLOCK)[None, :]
        mask = (head < NUM_HEADS) & (channel < HEAD_DIM)
        offsets = head * HEAD_DIM + channel
        x = tl.load(x_row + row * stride + offsets, mask=mask, other=0.0).to(tl.float32)
        # RMS over the whole width: every head of the row together.
        rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(x * x, axis=1), axis=0) / (NUM_HEADS * HEAD_DIM) + eps)
        x = x * rstd * tl.load(gain + offsets, mask=mask, other=0.0).to(tl.float32)
        # Interleaved pairs: channels 2p and 2p + 1 of a head rotate by the token's angle p,
        # one [HEAD_DIM / 2] row of the table for all heads.
        even, odd = tl.split(tl.reshape(x, (HEADS_BLOCK, HEAD_BLOCK // 2, 2)))
        pair = tl.arange(0, HEAD_BLOCK // 2)
        angle = (row % table_rows) * (HEAD_DIM // 2) + pair
        c = tl.load(COS + angle, mask=pair < HEAD_DIM // 2, other=1.0)[None, :]
        s = tl.load(SIN + angle, mask=pair < HEAD_DIM // 2, other=0.0)[None, :]
        rotated = tl.reshape(tl.join(even * c - odd * s, even * s + odd * c), (HEADS_BLOCK, HEAD_BLOCK))
        tl.store(out_row + row * (NUM_HEADS * HEAD_DIM) + offsets, rotated.to(out_row.dtype.element_ty), mask=mask)


def qk_norm_rope(q, k, weight_q, weight_k, cos, sin, num_heads: int, eps: float):
    """Returns (q, k) normalised and rotated, [rows, D] contiguous in the input dtype."""
    from .utils import block_size, launch_config, wide_offsets

    if q.ndim != 2 or q.shape != k.shape or q.stride(1) != 1 or k.stride(1) != 1:
        raise ValueError(f"q and k must be [rows, D] with unit column stride, got {tuple(q.shape)}, {tuple(k.shape)}")
    rows, width = q.shape
    head_dim = width // num_heads
    if width % (2 * num_heads):
        raise ValueError(f"width {width} is not {num_heads} heads of an even size")
    for name, table in (("cos", cos), ("sin", sin)):
        if table.dtype != torch.float32 or table.shape[1] != head_dim // 2 or not table.is_contiguous():
            raise ValueError(f"{name} must be contiguous fp32 [table_rows, {head_dim // 2}], got {table.dtype} "
                             f"{tuple(table.shape)}")
        if rows % table.shape[0]:
            raise ValueError(f"{rows} rows do not repeat the {table.shape[0]} table rows")
    q_out = torch.empty((rows, width), dtype=q.dtype, device=q.device)
    k_out = torch.empty_like(q_out)
    heads_block, head_block = block_size(num_heads), block_size(head_dim)
    # One row per program: the norm spans all heads of a row, and only the tiny test models have
    # rows narrow enough for packing several to help (14B: 40 x 128, 8192 lanes a row).
    config = launch_config(heads_block * head_block, q.element_size(), max_rows_per_program=1)
    _qk_norm_rope_kernel[(rows, 2)](q, k, q_out, k_out, weight_q.contiguous(), weight_k.contiguous(), cos, sin,
                                    q.stride(0), k.stride(0), cos.shape[0], eps, NUM_HEADS=num_heads,
                                    HEAD_DIM=head_dim, HEADS_BLOCK=heads_block, HEAD_BLOCK=head_block,
                                    WIDE=wide_offsets(rows, q.stride(0), k.stride(0), width),
                                    num_warps=config.num_warps)
    return q_out, k_out
