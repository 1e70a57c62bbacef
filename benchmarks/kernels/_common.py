"""Shared by the kernel benchmarks: timing, bandwidth and CSV output (GPU only).

Each benchmark times the Triton kernel, the eager PyTorch reference and the reference under
torch.compile, at the 14B geometry (hidden 5120; 11,040 / 4,560 / 2,940 tokens per forward:
pyramid stage 2 / 1 / 0), and reports effective bandwidth (bytes the op must move / time)
against the device's peak.
"""

from __future__ import annotations

import argparse
import csv
import sys

import torch

TOKENS = (11040, 4560, 2940)
HIDDEN = 5120
HEADS = 40
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
H100_SXM_PEAK_GBPS = 3350.0


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--peak-gbps", type=float, default=H100_SXM_PEAK_GBPS,
                        help="device memory bandwidth peak (default: H100 SXM HBM3)")
    parser.add_argument("--csv", default=None, help="write the rows here (default: stdout)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("these benchmarks need a CUDA GPU (the kernels are tested on CPU with TRITON_INTERPRET=1)")
    return args


def milliseconds(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100)


def run(op: str, cases, args: argparse.Namespace) -> None:
    """``cases``: (tokens, bytes moved, {implementation name: callable}) tuples."""
    rows = []
    for tokens, nbytes, implementations in cases:
        for name, fn in implementations.items():
            if name == "torch.compile" and args.no_compile:
                continue
            ms = milliseconds(fn)
            gbps = nbytes / ms / 1e6
            rows.append({"op": op, "impl": name, "tokens": tokens, "hidden": HIDDEN, "dtype": args.dtype,
                         "ms": round(ms, 4), "gbps": round(gbps, 1), "pct_of_peak": round(100 * gbps / args.peak_gbps, 1),
                         "device": torch.cuda.get_device_name()})
    out = open(args.csv, "w", newline="") if args.csv else sys.stdout
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    if args.csv:
        out.close()
