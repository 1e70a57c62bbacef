"""Offline throughput of the continuous-batching engine: N concurrent requests vs one at a time.

    python benchmarks/benchmark_throughput.py --num-requests 8 --num-frames 66 --json results.json

Runs the same workload twice on one engine, interleaved (batched, sequential, batched, ...):
  batched     all requests submitted together; every engine step batches their denoising steps
  sequential  the requests one after another
and prints generated frames per second, the batched/sequential throughput ratio, the engine's
own time per step (outside the model), time to first chunk and peak RSS.

On CPU, batching gains little: CPU GEMMs are already efficient at batch 1 and helios-tiny on
CPU is elementwise-bound (performance-model.md §5). The ratio is not a GPU prediction.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import append_record, make_record  # noqa: E402

from helios_serve import HeliosEngine, VideoSamplingParams  # noqa: E402
from helios_serve.core.policy import POLICIES  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="helios-tiny", help="helios-tiny[-mid|-base] or a checkpoint directory")
    parser.add_argument("--num-requests", type=int, default=8, help="concurrent requests")
    parser.add_argument("--num-frames", type=int, default=66, help="frames per video")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--pyramid-steps", default=None, help="steps per stage, e.g. 2,2,2 [model default]")
    parser.add_argument("--guidance-scale", type=float, default=None, help="> 1 adds a CFG row per request")
    parser.add_argument("--policy", default="round-robin", choices=sorted(POLICIES),
                        help="the batched run's policy: round-robin batches every request's steps; fcfs finishes "
                             "them in arrival order, sharing a forward only when it is cheap [round-robin]")
    parser.add_argument("--max-rows", type=int, default=None, help="rows per forward [derived from the model]")
    parser.add_argument("--max-decodes-in-flight", type=int, default=None,
                        help="decodes a request may run behind its denoising; 0 decodes serially [2 on CUDA, else 0]")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repetitions of each mode; best is kept")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the figures as one JSON object")
    parser.add_argument("--output-file", default=None, help="append the result to this .jsonl (and its .csv)")
    return parser.parse_args(argv)


def run_batched(engine: HeliosEngine, prompts, params) -> dict:
    stats = engine.stats
    before = (stats.steps, stats.step_seconds, stats.model_seconds, stats.forwards, stats.rows)
    submitted = time.perf_counter()
    first_chunk: dict[str, float] = {}

    def on_chunk(chunk):
        first_chunk.setdefault(chunk.request_id, time.perf_counter() - submitted)

    videos = engine.generate(prompts, params, on_chunk=on_chunk)
    wall = time.perf_counter() - submitted
    steps, step_s, model_s, forwards, rows = (now - then for now, then in zip(
        (stats.steps, stats.step_seconds, stats.model_seconds, stats.forwards, stats.rows), before))
    return {
        "wall_s": wall,
        "frames": sum(len(v.frames) for v in videos),
        "ttfc_p50_s": statistics.median(first_chunk.values()),
        "steps": steps,
        "overhead_us_per_step": 1e6 * (step_s - model_s) / steps,
        "overhead_fraction": (step_s - model_s) / model_s,
        "mean_rows_per_forward": rows / max(forwards, 1),
    }


def run_sequential(engine: HeliosEngine, prompts, params) -> dict:
    started = time.perf_counter()
    frames, ttfc = 0, []
    for prompt in prompts:
        submitted = time.perf_counter()
        for i, chunk in enumerate(engine.stream(prompt, params)):
            if i == 0:
                ttfc.append(time.perf_counter() - submitted)
            frames += len(chunk.frames)
    return {"wall_s": time.perf_counter() - started, "frames": frames, "ttfc_s": min(ttfc)}


def main(argv=None) -> int:
    args = parse_args(argv)
    options = {"policy": args.policy, "max_decodes_in_flight": args.max_decodes_in_flight}
    if args.max_rows:
        options["max_rows_per_forward"] = args.max_rows
    engine = HeliosEngine(args.model, device=args.device, **options)
    steps = tuple(int(n) for n in args.pyramid_steps.split(",")) if args.pyramid_steps else None
    params = VideoSamplingParams(
        num_frames=args.num_frames, height=args.height, width=args.width,
        pyramid_num_inference_steps_list=steps, guidance_scale=args.guidance_scale,
    )
    prompts = [f"benchmark prompt {i}" for i in range(args.num_requests)]
    engine.generate(prompts[:2], params.with_updates(num_frames=33))  # warm-up of every shape

    batched, sequential = [], []
    for _ in range(args.repeats):
        batched.append(run_batched(engine, prompts, params))
        sequential.append(run_sequential(engine, prompts, params))
    best_batched = min(batched, key=lambda r: r["wall_s"])
    best_sequential = min(sequential, key=lambda r: r["wall_s"])
    figures = {
        "model": args.model,
        "num_requests": args.num_requests,
        "num_frames": args.num_frames,
        "size": f"{args.width}x{args.height}",
        "frames_per_second": best_batched["frames"] / best_batched["wall_s"],
        "sequential_frames_per_second": best_sequential["frames"] / best_sequential["wall_s"],
        "batched_vs_sequential": best_sequential["wall_s"] / best_batched["wall_s"],
        "overhead_us_per_step": best_batched["overhead_us_per_step"],
        "overhead_fraction": best_batched["overhead_fraction"],
        "mean_rows_per_forward": best_batched["mean_rows_per_forward"],
        "ttfc_s": best_sequential["ttfc_s"],
        "ttfc_batched_p50_s": best_batched["ttfc_p50_s"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print_table(figures)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    if args.output_file:
        config = {key: figures.pop(key) for key in ("model", "num_requests", "num_frames", "size")}
        config["max_concurrency"] = config["num_requests"]
        append_record(args.output_file, make_record("throughput", f"engine {config['model']}", config, figures))
    return 0


def print_table(figures: dict) -> None:
    rows = [
        ("workload", f"{figures['num_requests']} x {figures['num_frames']} frames at {figures['size']}, {figures['model']}"),
        ("frames/s batched", f"{figures['frames_per_second']:.1f}"),
        ("frames/s one at a time", f"{figures['sequential_frames_per_second']:.1f}"),
        ("batched / sequential", f"{figures['batched_vs_sequential']:.2f}x"),
        ("rows per forward (mean)", f"{figures['mean_rows_per_forward']:.1f}"),
        ("engine overhead per step", f"{figures['overhead_us_per_step']:.0f} us "
                                     f"({100 * figures['overhead_fraction']:.2f}% of model time)"),
        ("time to first chunk", f"{figures['ttfc_s']:.3f} s alone, {figures['ttfc_batched_p50_s']:.3f} s p50 batched"),
        ("peak RSS", f"{figures['peak_rss_mb']:.0f} MB"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    sys.exit(main())
