"""Triton kernels for the hot elementwise paths (installed as helios_serve.kernels).

Each op lives in its own file: the ``@triton.jit`` kernel, a launcher that checks shapes,
strides and dtypes and picks block sizes, and the plain-PyTorch ``*_ref`` reference. This
package imports only torch, triton and the standard library; without triton, the references
still import. Launching a kernel needs a GPU, or ``TRITON_INTERPRET=1`` (set before triton is
imported) to run it on the CPU for tests.

Why there is no fifth kernel: a profile of the native tiny model on CPU puts attention at 90%
of the forward at real token counts (384x640: 11,040 tokens) and 55% at 128x192, with the
elementwise ops fused here making up most of the rest. At 14B on GPU the one large elementwise
op left is GELU(tanh) on the [tokens, 13824] FFN activations, which belongs in the fc1 GEMM's
epilogue (cuBLASLt / torch.compile do that), not in a standalone kernel that would re-read it.
"""

from .gated_residual import gated_residual, gated_residual_ref
from .layer_norm import layer_norm, layer_norm_ref
from .norm_modulate import norm_modulate, norm_modulate_ref
from .qk_norm_rope import qk_norm_rope, qk_norm_rope_ref

__all__ = [
    "gated_residual", "gated_residual_ref", "layer_norm", "layer_norm_ref",
    "norm_modulate", "norm_modulate_ref", "qk_norm_rope", "qk_norm_rope_ref",
]
