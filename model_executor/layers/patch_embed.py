"""Non-overlapping 3-D patch embedding (a Conv3d with stride == kernel) as one matmul.

Unfolding the patches and applying the kernel as a linear map gives the conv's result, and
unlike CPU Conv3d (whose algorithm choice depends on the batch size) it can be made batch
invariant (see layers/linear.py). The parameters keep the Conv3d layout [D, C, kt, kh, kw],
so checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .linear import linear


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, kernel: tuple[int, int, int], batch_invariant: bool = False):
        super().__init__()
        self.kernel = tuple(kernel)
        self.batch_invariant = batch_invariant
        self.weight = nn.Parameter(torch.empty(dim, in_channels, *self.kernel))
        self.bias = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """[B, C, T, H, W] -> (tokens [B, N, D] in row-major (t, h, w) order, grid (T', H', W')).

        Trailing remainders that do not fill a patch are dropped, as a strided conv does.
        """
        batch, channels = x.shape[:2]
        grid = tuple(size // k for size, k in zip(x.shape[2:], self.kernel))
        kt, kh, kw = self.kernel
        x = x[:, :, : grid[0] * kt, : grid[1] * kh, : grid[2] * kw]
        x = x.reshape(batch, channels, grid[0], kt, grid[1], kh, grid[2], kw)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(batch, math.prod(grid), -1)
        return linear(x, self.weight.flatten(1), self.bias, self.batch_invariant), grid
