"""Attention kernels, by backend: chosen once from config (``attention_backend``), never patched.

Every backend computes unmasked softmax attention of q, k, v given as [B, N, heads, head_dim]
and returns [B, N, heads * head_dim]. They differ in kernels and in the layout they want:

- ``sdpa``: PyTorch's scaled_dot_product_attention, its own dispatch ([B, heads, N, d] views);
- ``flash``, ``cudnn``: the same call held to FlashAttention-2 or cuDNN attention;
- ``fa3``: FlashAttention 3 (``flash_attn_interface``), which takes [B, N, heads, d] as it is.

``auto`` picks, on a Hopper GPU in half precision, cuDNN attention when the cuDNN is new enough
for Helios's sequence lengths (2,940, 4,560 and 11,040 tokens at 384x640: not multiples of 128),
else FA3 when installed; else FlashAttention-2 on CUDA, and PyTorch's dispatch elsewhere.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)
BACKENDS = ("auto", "sdpa", "flash", "cudnn", "fa3")
CUDNN_ARBITRARY_SEQLEN = 91600
"""cuDNN 9.16: PyTorch runs cuDNN attention for query lengths that are not multiples of 128
only from here on (pytorch/pytorch#167101 turns it off up to 9.15)."""
HOPPER = (9, 0)


@dataclass(frozen=True)
class Capabilities:
    """What the attention choice depends on (probed once per device, mockable in tests)."""

    device_type: str
    compute_capability: tuple[int, int] | None = None
    cudnn_version: int | None = None
    has_fa3: bool = False

    @classmethod
    def probe(cls, device: torch.device) -> Capabilities:
        device = torch.device(device)
        if device.type != "cuda":
            return cls(device.type)
        return cls("cuda", torch.cuda.get_device_capability(device), torch.backends.cudnn.version(),
                   importlib.util.find_spec("flash_attn_interface") is not None)


def choose_backend(requested: str, capabilities: Capabilities, dtype: torch.dtype) -> str:
    """The backend to run (never "auto"); ValueError when the requested one cannot run here."""
    if requested not in BACKENDS:
        raise ValueError(f"attention_backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    half = dtype in (torch.float16, torch.bfloat16)
    if requested == "auto":
        if capabilities.device_type != "cuda" or not half:
            return "sdpa"
        if capabilities.compute_capability == HOPPER:
            if (capabilities.cudnn_version or 0) >= CUDNN_ARBITRARY_SEQLEN:
                return "cudnn"
            if capabilities.has_fa3:
                return "fa3"
        return "flash"
    if requested != "sdpa":
        if capabilities.device_type != "cuda":
            raise ValueError(f"attention backend {requested!r} needs a CUDA device; use sdpa or auto")
        if not half:
            raise ValueError(f"attention backend {requested!r} needs bfloat16 or float16, not {dtype}")
        if requested == "fa3" and not capabilities.has_fa3:
            raise ValueError("attention backend 'fa3' needs FlashAttention 3 (the flash_attn_interface module)")
    return requested


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).flatten(2)


def _held_to(kernel) -> Callable:
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel([kernel]):
            return _sdpa(q, k, v)

    return attend


def _fa3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn_interface import flash_attn_func

    out = flash_attn_func(q, k, v)
    return (out[0] if isinstance(out, tuple) else out).flatten(2)  # some releases also return the LSE


def attention_function(backend: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The attention of ``backend`` (one of BACKENDS but "auto")."""
    from torch.nn.attention import SDPBackend

    functions = {"sdpa": _sdpa, "flash": _held_to(SDPBackend.FLASH_ATTENTION),
                 "cudnn": _held_to(SDPBackend.CUDNN_ATTENTION), "fa3": _fa3}
    try:
        return functions[backend]
    except KeyError:
        raise ValueError(f"no attention backend {backend!r}; choose one of {', '.join(BACKENDS[1:])}") from None
