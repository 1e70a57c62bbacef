"""Relative 3-D rotary position embedding (spec §2.3).

Each token carries one angle per channel pair: the first ``rope_dim[0] / 2`` pairs rotate by
its frame index, the next by its row and the last by its column. Tables are kept per pair
(``[..., head_dim / 2]``) rather than duplicated per channel: the rotation of pair ``i``
only needs ``cos`` and ``sin`` of angle ``i``.

Mid and long history tokens cover several positions each; their tables are the average of
the per-position tables over the token's footprint (cos and sin pooled separately).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class RotaryTable(NamedTuple):
    cos: torch.Tensor
    """[B, N, head_dim / 2] fp32, cosine of each pair's angle."""
    sin: torch.Tensor
    """[B, N, head_dim / 2] fp32."""

    @staticmethod
    def cat(tables: list[RotaryTable]) -> RotaryTable:
        batch = max(t.cos.shape[0] for t in tables)
        cos = torch.cat([t.cos.expand(batch, -1, -1) for t in tables], dim=1)
        sin = torch.cat([t.sin.expand(batch, -1, -1) for t in tables], dim=1)
        return RotaryTable(cos, sin)


def axis_frequencies(dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """theta^(-2k/dim) for k < dim/2, computed in fp32 as the reference does."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float32, device=device)[: dim // 2] / dim
    return 1.0 / (theta**exponents)


def rotary_grid(
    frame_indices: torch.Tensor,
    height: int,
    width: int,
    rope_dim: tuple[int, int, int],
    theta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position cos and sin, each [B, head_dim / 2, T, height, width] in fp32.

    Positions are integers of the term's own grid; frames come from ``frame_indices`` [B, T].
    Angles are computed in fp32 under disabled autocast: bf16 cannot hold integers past 256.
    """
    device = frame_indices.device
    batch, num_frames = frame_indices.shape
    # Meta tensors (FLOP counting) have no autocast of their own; the CPU one stands in.
    with torch.autocast(device_type="cpu" if device.type == "meta" else device.type, enabled=False):
        t = frame_indices.to(torch.float32)[:, :, None, None].expand(batch, num_frames, height, width)
        y = torch.arange(height, dtype=torch.float32, device=device)[None, None, :, None].expand_as(t)
        x = torch.arange(width, dtype=torch.float32, device=device)[None, None, None, :].expand_as(t)
        angles = [
            axis_frequencies(dim, theta, device)[:, None, None, None, None] * position[None]
            for dim, position in zip(rope_dim, (t, y, x))
        ]
        angles = torch.cat(angles, dim=0).transpose(0, 1)  # [B, head_dim/2, T, H, W]
    return angles.cos(), angles.sin()


def pad_replicate(x: torch.Tensor, multiple: tuple[int, int, int]) -> torch.Tensor:
    """Pad the last three axes of a 5-D tensor on their trailing side up to multiples."""
    *_, t, h, w = x.shape
    pads = [(m - size % m) % m for size, m in zip((t, h, w), multiple)]
    if not any(pads):
        return x
    return F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")


def _flatten_tokens(table: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, T*H*W, C], tokens in row-major (t, h, w) order."""
    return table.flatten(2).transpose(1, 2)


def rotary_table(
    frame_indices: torch.Tensor,
    height: int,
    width: int,
    rope_dim: tuple[int, int, int],
    theta: float,
    pool: tuple[int, int, int] | None = None,
) -> RotaryTable:
    """The table of one token term; ``pool`` is the footprint of a compressed history token."""
    cos, sin = rotary_grid(frame_indices, height, width, rope_dim, theta)
    if pool is not None:
        cos = F.avg_pool3d(pad_replicate(cos, pool), pool, stride=pool)
        sin = F.avg_pool3d(pad_replicate(sin, pool), pool, stride=pool)
    return RotaryTable(_flatten_tokens(cos), _flatten_tokens(sin))


def apply_rotary(x: torch.Tensor, table: RotaryTable) -> torch.Tensor:
    """Rotate interleaved channel pairs of x [B, N, heads, head_dim]; math in fp32."""
    cos = table.cos.unsqueeze(2)
    sin = table.sin.unsqueeze(2)
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    rotated_even = even * cos - odd * sin
    rotated_odd = even * sin + odd * cos
    return torch.stack([rotated_even, rotated_odd], dim=-1).flatten(-2).type_as(x)
