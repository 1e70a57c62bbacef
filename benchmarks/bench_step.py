"""Latency of one denoising forward of the transformer, by batch size and resolution.

Runs the model alone (no engine): one chunk of 9 latent frames with the full [16, 2, 1]
history, as every forward of a Helios request has. Prints a table and writes CSV.

    python benchmarks/bench_step.py --model helios-tiny --sizes 96x160,192x320 --batch-sizes 1,2,4
"""

from __future__ import annotations

import argparse
import csv
import sys
import time

import torch
from helios_serve.model_executor.smoke import HISTORY_FRAMES, chunk_inputs, load_model


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        height, _, width = item.partition("x")
        sizes.append((int(height), int(width)))
    return sizes


def time_forward(model, inputs, repeats: int, device: str) -> float:
    with torch.inference_mode():
        model(**inputs)  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            model(**inputs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def batched(inputs: dict, batch: int) -> dict:
    per_sample = ("hidden_states", "encoder_hidden_states", "latents_history_short", "latents_history_mid",
                  "latents_history_long")
    out = dict(inputs)
    for key in per_sample:
        out[key] = inputs[key].expand(batch, *inputs[key].shape[1:]).contiguous()
    out["timestep"] = torch.linspace(999, 1, batch, device=inputs["timestep"].device).long()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="helios-tiny", help="preset or transformer folder")
    parser.add_argument("--sizes", default="96x160,192x320,384x640", help="video sizes HxW in pixels")
    parser.add_argument("--batch-sizes", default="1,2,4", help="samples per forward")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--csv", default=None, help="write the rows to this CSV file")
    args = parser.parse_args(argv)

    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    model = load_model(args.model, dtype, args.device)
    rows = []
    print(f"{'size':>9} {'batch':>5} {'tokens':>7} {'ms/forward':>11} {'ms/sample':>10}")
    for height, width in parse_sizes(args.sizes):
        base = chunk_inputs(model, height // 8, width // 8, seed=0, device=args.device, dtype=dtype)
        tokens = model.config.token_counts(height // 8, width // 8, history_frames=HISTORY_FRAMES)["total"]
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            seconds = time_forward(model, batched(base, batch), args.repeats, args.device)
            row = dict(model=args.model, device=args.device, dtype=str(dtype).removeprefix("torch."),
                       height=height, width=width, batch=batch, tokens=tokens,
                       ms_per_forward=round(seconds * 1000, 3), ms_per_sample=round(seconds * 1000 / batch, 3))
            rows.append(row)
            print(f"{height:>4}x{width:<4} {batch:>5} {tokens:>7} {row['ms_per_forward']:>11.1f} {row['ms_per_sample']:>10.1f}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
