"""GB/s of the fused q/k RMSNorm + 3-D RoPE vs eager and torch.compile (GPU), q and k from a fused qkv."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import DTYPES, HEADS, HIDDEN, TOKENS, parse_args, run  # noqa: E402

from helios_serve.kernels import qk_norm_rope, qk_norm_rope_ref  # noqa: E402


def main() -> None:
    args = parse_args(__doc__)
    dtype = DTYPES[args.dtype]
    compiled = torch.compile(qk_norm_rope_ref)
    half_head = HIDDEN // HEADS // 2
    def case(tokens):  # a function, so each case's lambdas close over their own tensors
        qkv = torch.randn(tokens, 3 * HIDDEN, device="cuda", dtype=dtype)
        q, k = qkv[:, :HIDDEN], qkv[:, HIDDEN : 2 * HIDDEN]
        angles = torch.rand(tokens, half_head, device="cuda") * 30
        cos, sin = angles.cos(), angles.sin()
        weight_q, weight_k = (torch.randn(HIDDEN, device="cuda", dtype=dtype) for _ in range(2))
        # read q and k, write both; the fp32 angle tables are read once per row
        nbytes = 4 * q.numel() * q.element_size() + 2 * cos.numel() * 4
        return (tokens, nbytes, {
            "triton": lambda: qk_norm_rope(q, k, weight_q, weight_k, cos, sin, HEADS, 1e-6),
            "eager": lambda: qk_norm_rope_ref(q, k, weight_q, weight_k, cos, sin, HEADS, 1e-6),
            "torch.compile": lambda: compiled(q, k, weight_q, weight_k, cos, sin, HEADS, 1e-6),
        })

    cases = [case(tokens) for tokens in TOKENS]
    run("qk_norm_rope", cases, args)


if __name__ == "__main__":
    main()
