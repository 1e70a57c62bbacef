"""Linear layers with an optional batch-invariant mode.

CPU BLAS picks different kernels for different row counts (a 9-row product and the same
rows inside an 18-row product round differently), so a request's numbers would depend on
its batch mates. In batch-invariant mode each sample is multiplied on its own: attention,
norms and elementwise work stay batched, and a request's output is bitwise the same alone
or batched. Chosen at construction (default on CPU; off on CUDA, where batching GEMMs is
the point and cuBLAS gives no such guarantee anyway).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, batch_invariant: bool) -> torch.Tensor:
    if batch_invariant and x.ndim > 1 and x.shape[0] > 1:
        return torch.cat([F.linear(sample, weight, bias) for sample in x.split(1)])
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, batch_invariant: bool = False):
        super().__init__(in_features, out_features)
        self.batch_invariant = batch_invariant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.batch_invariant)


def per_sample(fn, x: torch.Tensor, batch_invariant: bool) -> torch.Tensor:
    """Apply an elementwise op sample by sample when batch invariance is asked for.

    Transcendental ops (tanh, exp) are vectorised on CPU, and the elements left over at the
    boundaries of each thread's share are computed by a scalar routine that rounds
    differently; those boundaries move with the batch size.
    """
    if batch_invariant and x.ndim > 1 and x.shape[0] > 1:
        return torch.cat([fn(sample) for sample in x.split(1)])
    return fn(x)


def gelu_tanh(x: torch.Tensor, batch_invariant: bool = False) -> torch.Tensor:
    return per_sample(lambda t: F.gelu(t, approximate="tanh"), x, batch_invariant)
