"""Self- and cross-attention of a Helios block (spec §2.5).

Projections are fused (q|k|v for self-attention, k|v for cross-attention): one matmul
instead of three. The loader stacks the checkpoint's separate ``to_q``/``to_k``/``to_v``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .attention_backends import attention_function
from .linear import Linear
from .norm import RMSNorm
from .rotary import RotaryTable

# Upper bound of the learnable history-key gain (spec §2.7).
MAX_HISTORY_KEY_SCALE = 10.0


class SelfAttention(nn.Module):
    """Attention over all tokens (history and noisy) with q/k RMSNorm and 3-D RoPE."""

    def __init__(
        self, dim: int, num_heads: int, eps: float, amplify_history: bool, history_scale_mode: str, batch_invariant: bool,
        ops,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.ops = ops
        self.attend = attention_function("sdpa")
        """The attention kernel (layers/attention_backends.py); HeliosTransformer.use_attention sets it."""
        self.to_qkv = Linear(dim, 3 * dim, batch_invariant)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        self.to_out = Linear(dim, dim, batch_invariant)
        self.history_key_scale = None
        if amplify_history:
            num_scales = num_heads if history_scale_mode == "per_head" else 1
            self.history_key_scale = nn.Parameter(torch.ones(num_scales))

    def forward(self, x: torch.Tensor, rotary: RotaryTable, num_history: int, shards=None) -> torch.Tensor:
        """``shards`` (sequence_parallel.TokenShards): x holds this rank's tokens, the attention
        runs over every rank's; None: x holds them all."""
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k = self.ops.qk_norm_rope(q, k, self.norm_q, self.norm_k, rotary, self.num_heads)
        v = v.unflatten(-1, (self.num_heads, -1))
        if self.history_key_scale is not None and num_history > 0:
            k = self._amplify_history_keys(k, num_history)
        out = self.attend(q, k, v) if shards is None else shards.attend(self.attend, q, k, v)
        return self.to_out(out.type_as(q))

    def _amplify_history_keys(self, k: torch.Tensor, num_history: int) -> torch.Tensor:
        # Gain in (1, MAX): history keys get sharper attention logits, per head.
        gain = 1.0 + torch.sigmoid(self.history_key_scale.float()) * (MAX_HISTORY_KEY_SCALE - 1.0)
        gain = gain.view(1, 1, -1, 1)
        history = (k[:, :num_history].float() * gain).type_as(k)
        return torch.cat([history, k[:, num_history:]], dim=1)


class CrossAttention(nn.Module):
    """Attention from tokens to the projected text embeddings (no RoPE, no mask)."""

    def __init__(self, dim: int, num_heads: int, eps: float, batch_invariant: bool):
        super().__init__()
        self.num_heads = num_heads
        self.attend = attention_function("sdpa")
        self.to_q = Linear(dim, dim, batch_invariant)
        self.to_kv = Linear(dim, 2 * dim, batch_invariant)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        self.to_out = Linear(dim, dim, batch_invariant)

    def text_kv(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the projected text [B, L, D]: each [B, L, heads, head_dim]. They
        depend on the prompt only, so callers may compute them once per prompt and reuse them."""
        k, v = self.to_kv(text).chunk(2, dim=-1)
        return self.norm_k(k).unflatten(-1, (self.num_heads, -1)), v.unflatten(-1, (self.num_heads, -1))

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Attention of x [B, N, D] to the text's keys and values (``text_kv``)."""
        q = self.norm_q(self.to_q(x)).unflatten(-1, (self.num_heads, -1))
        return self.to_out(self.attend(q, *kv).type_as(q))
