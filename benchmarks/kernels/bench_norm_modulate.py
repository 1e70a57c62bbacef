"""GB/s of the fused LayerNorm + AdaLN modulation vs eager and torch.compile (GPU)."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import DTYPES, HIDDEN, TOKENS, parse_args, run  # noqa: E402

from helios_serve.kernels import norm_modulate, norm_modulate_ref  # noqa: E402


def main() -> None:
    args = parse_args(__doc__)
    dtype = DTYPES[args.dtype]
    compiled = torch.compile(norm_modulate_ref)
    def case(tokens):  # a function, so each case's lambdas close over their own tensors
        x = torch.randn(tokens, HIDDEN, device="cuda", dtype=dtype)
        shift, scale = (torch.randn(2, HIDDEN, device="cuda") for _ in range(2))
        index = (torch.arange(tokens, device="cuda") >= 2400).to(torch.int32)  # history, then noisy tokens
        nbytes = 2 * x.numel() * x.element_size()  # read x, write y (the tables stay in cache)
        return (tokens, nbytes, {
            "triton": lambda: norm_modulate(x, shift, scale, index, 1e-6),
            "eager": lambda: norm_modulate_ref(x, shift, scale, index, 1e-6),
            "torch.compile": lambda: compiled(x, shift, scale, index, 1e-6),
        })

    cases = [case(tokens) for tokens in TOKENS]
    run("norm_modulate", cases, args)


if __name__ == "__main__":
    main()
