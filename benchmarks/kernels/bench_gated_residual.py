"""GB/s of the fused gated residual add vs eager and torch.compile (GPU)."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import DTYPES, HIDDEN, TOKENS, parse_args, run  # noqa: E402

from helios_serve.kernels import gated_residual, gated_residual_ref  # noqa: E402


def main() -> None:
    args = parse_args(__doc__)
    dtype = DTYPES[args.dtype]
    compiled = torch.compile(gated_residual_ref)
    def case(tokens):  # a function, so each case's lambdas close over their own tensors
        h, y = (torch.randn(tokens, HIDDEN, device="cuda", dtype=dtype) for _ in range(2))
        gate = torch.randn(2, HIDDEN, device="cuda")
        index = (torch.arange(tokens, device="cuda") >= 2400).to(torch.int32)
        nbytes = 3 * h.numel() * h.element_size()  # read h and y, write the sum
        return (tokens, nbytes, {
            "triton": lambda: gated_residual(h, y, gate, index),
            "eager": lambda: gated_residual_ref(h, y, gate, index),
            "torch.compile": lambda: compiled(h, y, gate, index),
        })

    cases = [case(tokens) for tokens in TOKENS]
    run("gated_residual", cases, args)


if __name__ == "__main__":
    main()
