"""GB/s of the affine LayerNorm (norm2) vs eager and torch.compile (GPU).

Only noisy tokens take cross-attention, so norm2 sees 8,640 / 2,160 / 540 rows; the shared
token list is used for comparability with the other ops.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import DTYPES, HIDDEN, TOKENS, parse_args, run  # noqa: E402

from helios_serve.kernels import layer_norm, layer_norm_ref  # noqa: E402


def main() -> None:
    args = parse_args(__doc__)
    dtype = DTYPES[args.dtype]
    compiled = torch.compile(layer_norm_ref)
    def case(tokens):  # a function, so each case's lambdas close over their own tensors
        x = torch.randn(tokens, HIDDEN, device="cuda", dtype=dtype)
        weight, bias = torch.randn(HIDDEN, device="cuda"), torch.randn(HIDDEN, device="cuda")
        nbytes = 2 * x.numel() * x.element_size()
        return (tokens, nbytes, {
            "triton": lambda: layer_norm(x, weight, bias, 1e-6),
            "eager": lambda: layer_norm_ref(x, weight, bias, 1e-6),
            "torch.compile": lambda: compiled(x, weight, bias, 1e-6),
        })

    cases = [case(tokens) for tokens in TOKENS]
    run("layer_norm", cases, args)


if __name__ == "__main__":
    main()
