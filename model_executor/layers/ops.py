"""The elementwise ops of a Helios block, by backend: one registry, chosen at model construction.

``native`` is plain PyTorch (the reference and the CPU path). ``triton`` runs the fused kernels
of helios_serve.kernels. Modules call ``self.ops.<op>``; nothing is patched at run time.
"""

from __future__ import annotations

import torch

from .norm import SegmentParams, gated_residual, layer_norm_fp32, modulated_layer_norm
from .rotary import RotaryTable, apply_rotary


class NativeOps:
    name = "native"

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


class TritonOps(NativeOps):
    name = "triton"

    def __init__(self):
        from ... import kernels  # helios_serve.kernels; imported only when chosen

        self.kernels = kernels

    @staticmethod
    def _table(params: SegmentParams, batch: int) -> torch.Tensor:
        """Per-sample [history, noisy] rows as one fp32 table [2 * batch, D]."""
        history = params.history.float().expand(batch, 1, -1)
        noisy = params.noisy.float().expand(batch, 1, -1)
        return torch.cat([history, noisy], dim=1).reshape(2 * batch, -1).contiguous()

    @staticmethod
    def _row_index(x: torch.Tensor, num_history: int) -> torch.Tensor:
        """Each token row's row in ``_table``: 2 b for sample b's history tokens, 2 b + 1 for its noisy ones."""
        batch, tokens = x.shape[:2]
        is_noisy = (torch.arange(tokens, device=x.device) >= num_history).to(torch.int32)
        return (2 * torch.arange(batch, device=x.device, dtype=torch.int32)[:, None] + is_noisy[None]).reshape(-1)

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
