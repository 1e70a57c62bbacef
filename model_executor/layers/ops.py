"""The elementwise ops of a Helios block, by backend: one registry, chosen at model construction.

``native`` is plain PyTorch (the reference and the CPU path). ``triton`` runs the fused kernels
of helios_serve.kernels. Modules call ``self.ops.<op>``; nothing is patched at run time.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from .norm import SegmentParams, gated_residual, layer_norm_fp32, modulated_layer_norm
from .rotary import RotaryTable, apply_rotary


class NativeOps:
    name = "native"

    def block_modulation(self, history: torch.Tensor, noisy: torch.Tensor, batch: int) -> tuple[SegmentParams, ...]:
        """A block's six modulations (shift, scale, gate of attention, then of the FFN) from its
        fp32 rows [B|1, 6, D] of each segment, in the form this backend's ops take."""
        return tuple(SegmentParams(history[:, i : i + 1], noisy[:, i : i + 1]) for i in range(6))

    def modulated_layer_norm(self, x, shift: SegmentParams, scale: SegmentParams, num_history: int, eps: float):
        return modulated_layer_norm(x, shift, scale, num_history, eps)

    def gated_residual(self, h, y, gate: SegmentParams, num_history: int):
        return gated_residual(h, y, gate, num_history)

    def affine_layer_norm(self, x, weight, bias, eps: float):
        return layer_norm_fp32(x, eps, weight, bias).type_as(x)

    def qk_norm_rope(self, q, k, norm_q, norm_k, rotary: RotaryTable, num_heads: int):
        """q, k [B, N, D] -> normalised over D, split into heads [B, N, H, hd], rotated."""
        q = apply_rotary(norm_q(q).unflatten(-1, (num_heads, -1)), rotary)
        k = apply_rotary(norm_k(k).unflatten(-1, (num_heads, -1)), rotary)
        return q, k


class ModulationTable(NamedTuple):
    """One modulation as the Triton kernels read it: fp32 [2 * batch, D], rows (history, noisy) per sample."""

    table: torch.Tensor


@functools.lru_cache(maxsize=64)
def _row_index(batch: int, tokens: int, num_history: int, device: torch.device) -> torch.Tensor:
    """Built once per geometry (a function of these integers only), not four times per block."""
    is_noisy = (torch.arange(tokens, device=device) >= num_history).to(torch.int32)
    return (2 * torch.arange(batch, device=device, dtype=torch.int32)[:, None] + is_noisy[None]).reshape(-1)


class TritonOps(NativeOps):
    name = "triton"

    def __init__(self):
        from ... import kernels  # helios_serve.kernels; imported only when chosen

        self.kernels = kernels

    def block_modulation(self, history, noisy, batch):
        """All six tables of a block in one copy: [6, 2 * batch, D], each a contiguous ``_table``."""
        width = history.shape[-1]
        rows = torch.stack([history.expand(batch, 6, width), noisy.expand(batch, 6, width)], dim=2)
        tables = rows.permute(1, 0, 2, 3).reshape(6, 2 * batch, width)
        return tuple(ModulationTable(tables[i]) for i in range(6))

    @staticmethod
    def _table(params, batch: int) -> torch.Tensor:
        """Per-sample [history, noisy] rows as one fp32 table [2 * batch, D]."""
        if isinstance(params, ModulationTable):
            return params.table
        history = params.history.float().expand(batch, 1, -1)
        noisy = params.noisy.float().expand(batch, 1, -1)
        return torch.cat([history, noisy], dim=1).reshape(2 * batch, -1).contiguous()

    @staticmethod
    def _row_index(x: torch.Tensor, num_history: int) -> torch.Tensor:
        """Each token row's row in ``_table``: 2 b for sample b's history tokens, 2 b + 1 for its noisy ones."""
        return _row_index(*x.shape[:2], num_history, x.device)

    def modulated_layer_norm(self, x, shift, scale, num_history, eps):
        batch = x.shape[0]
        return self.kernels.norm_modulate(
            x, self._table(shift, batch), self._table(scale, batch), self._row_index(x, num_history), eps
        )

    def gated_residual(self, h, y, gate, num_history):
        return self.kernels.gated_residual(h, y, self._table(gate, h.shape[0]), self._row_index(h, num_history))

    def affine_layer_norm(self, x, weight, bias, eps):
        return self.kernels.layer_norm(x, weight, bias, eps)

    def qk_norm_rope(self, q, k, norm_q, norm_k, rotary, num_heads):
        batch, tokens, width = q.shape
        half = rotary.cos.shape[-1]
        q_out, k_out = self.kernels.qk_norm_rope(
            q.reshape(-1, width), k.reshape(-1, width), norm_q.weight, norm_k.weight,
            rotary.cos.reshape(-1, half).contiguous(), rotary.sin.reshape(-1, half).contiguous(), num_heads,
            norm_q.eps,
        )
        return (q_out.view(batch, tokens, num_heads, -1), k_out.view(batch, tokens, num_heads, -1))


KERNEL_BACKENDS = {"native": NativeOps, "triton": TritonOps}


def default_backend(device) -> str:
    """triton on CUDA when triton is installed, native elsewhere."""
    if torch.device(device).type != "cuda":
        return "native"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "native"
    return "triton"


def make_ops(name: str) -> NativeOps:
    try:
        return KERNEL_BACKENDS[name]()
    except KeyError:
        raise ValueError(f"kernels must be one of {sorted(KERNEL_BACKENDS)}, got {name!r}") from None
