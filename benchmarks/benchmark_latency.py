"""Latency of ONE request, broken down by the engine's units of work.

    python benchmarks/benchmark_latency.py --num-frames 99 --height 384 --width 640 --output-file results.jsonl

Runs the request through the engine (alone, so every engine step does one unit of it) and
times each step by its kind: prompt encode, chunk begin (fresh noise), each pyramid stage's
transformer forwards, stage transitions (upsample + re-noise), decode (VAE or preview); then
encodes each chunk to fragmented MP4 as the server does. Also prints the engine's own time
per step outside model work, and the forwards' achieved FLOP/s against the device's peak.
The best of --repeats runs is kept (after one warm-up run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import append_record, make_record  # noqa: E402

from helios_serve import HeliosEngine, VideoSamplingParams  # noqa: E402
from helios_serve.streaming.fmp4 import ChunkEncoder  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="helios-tiny", help="helios-tiny[-mid|-base] or a checkpoint directory")
    parser.add_argument("--num-frames", type=int, default=99, help="frames of the video")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--pyramid-steps", default=None, help="steps per stage, e.g. 1,1,1 [model default]")
    parser.add_argument("--guidance-scale", type=float, default=None, help="> 1 adds a CFG row")
    parser.add_argument("--fps", type=int, default=24, help="frame rate of the MP4 encode")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up; the fastest is reported")
    parser.add_argument("--device", default=None)
    parser.add_argument("--output-file", default=None, help="append the result to this .jsonl (and its .csv)")
    return parser.parse_args(argv)


class TimedExecutor:
    """Wraps the engine's executor: times each step's plan under the name of its unit of work."""

    def __init__(self, inner):
        self.inner = inner
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.flops: dict[str, int] = defaultdict(int)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def execute(self, plan):
        kind = self.kind(plan)
        started = time.perf_counter()
        result = self.inner.execute(plan)
        self.seconds[kind].append(time.perf_counter() - started)
        self.flops[kind] += result.model_flops
        return result

    def kind(self, plan) -> str:
        if plan.encode:
            return "text encode"
        if plan.denoise:
            state = self.inner.runner.requests[plan.denoise[0]]
            return f"stage {state.stage_index} forward"
        for name in ("begin_chunk", "next_stage", "decode", "free"):
            if getattr(plan, name):
                return {"begin_chunk": "chunk begin", "next_stage": "stage transition"}.get(name, name)
        return "idle"


def run_once(engine: HeliosEngine, params: VideoSamplingParams, fps: int, run: int) -> dict:
    timed = engine.core.executor = TimedExecutor(engine.core.executor)
    stats = engine.stats
    steps_before, step_s_before, model_s_before = stats.steps, stats.step_seconds, stats.model_seconds
    chunks, first_chunk = [], None
    started = time.perf_counter()
    # A new prompt each run: the engine caches prompt embeddings, and the encode is to be timed.
    for chunk in engine.stream(f"a lantern in the rain, run {run}", params):
        first_chunk = first_chunk or time.perf_counter() - started
        chunks.append(chunk.frames)
    wall = time.perf_counter() - started
    engine.core.executor = timed.inner
    encoder, encode_s, first_frame = ChunkEncoder(fps), [], 0
    for frames in chunks:
        t = time.perf_counter()
        encoder.encode(frames, first_frame)
        encode_s.append(time.perf_counter() - t)
        first_frame += len(frames)
    steps = stats.steps - steps_before
    return {
        "wall_s": wall,
        "ttfc_s": first_chunk,
        "frames": sum(len(c) for c in chunks),
        "chunks": len(chunks),
        "units": {kind: list(values) for kind, values in timed.seconds.items()},
        "flops": dict(timed.flops),
        "mp4_encode_s": encode_s,
        "overhead_us_per_step": 1e6 * ((stats.step_seconds - step_s_before) - (stats.model_seconds - model_s_before))
        / max(steps, 1),
    }


def breakdown_rows(run: dict, peak: float | None) -> list[tuple[str, str]]:
    rows = []
    for kind, values in sorted(run["units"].items(), key=lambda item: -sum(item[1])):
        total = sum(values)
        line = f"{len(values):4d} x {1e3 * statistics.mean(values):8.2f} ms = {1e3 * total:8.1f} ms"
        if run["flops"].get(kind):
            achieved = run["flops"][kind] / total
            line += f"   {achieved / 1e9:7.1f} GFLOP/s" + (f" ({100 * achieved / peak:.0f}% of peak)" if peak else "")
        rows.append((kind, line))
    encode = run["mp4_encode_s"]
    rows.append(("mp4 encode (fMP4)", f"{len(encode):4d} x {1e3 * statistics.mean(encode):8.2f} ms = "
                                      f"{1e3 * sum(encode):8.1f} ms"))
    rows += [
        ("engine overhead per step", f"{run['overhead_us_per_step']:.0f} us"),
        ("time to first chunk", f"{run['ttfc_s']:.3f} s"),
        ("end to end (engine)", f"{run['wall_s']:.3f} s for {run['frames']} frames = "
                                f"{run['frames'] / run['wall_s']:.1f} frames/s"),
    ]
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    engine = HeliosEngine(args.model, device=args.device)
    steps = tuple(int(n) for n in args.pyramid_steps.split(",")) if args.pyramid_steps else None
    params = VideoSamplingParams(num_frames=args.num_frames, height=args.height, width=args.width, seed=0,
                                 pyramid_num_inference_steps_list=steps, guidance_scale=args.guidance_scale)
    run_once(engine, params, args.fps, 0)  # warm-up: every shape once
    runs = [run_once(engine, params, args.fps, i) for i in range(1, args.repeats + 1)]
    best = min(runs, key=lambda run: run["wall_s"])
    peak, source = engine.core.executor.peak_flops()
    print(f"{args.model}: one {args.num_frames}-frame request at {args.width}x{args.height}, best of {args.repeats}")
    rows = breakdown_rows(best, peak)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if peak:
        print(f"(device peak {peak / 1e9:.0f} GFLOP/s, {source})")
    if args.output_file:
        config = {"model": args.model, "num_frames": args.num_frames, "size": f"{args.width}x{args.height}",
                  "pyramid_steps": args.pyramid_steps, "guidance_scale": args.guidance_scale, "repeats": args.repeats}
        metrics = {"wall_s": best["wall_s"], "ttfc_s": best["ttfc_s"], "frames": best["frames"],
                   "frames_per_second": best["frames"] / best["wall_s"],
                   "overhead_us_per_step": best["overhead_us_per_step"], "device_peak_flops": peak,
                   **{f"{kind.replace(' ', '_')}_s": sum(v) for kind, v in best["units"].items()},
                   "mp4_encode_s": sum(best["mp4_encode_s"])}
        samples = {f"{kind.replace(' ', '_')}_s": v for kind, v in best["units"].items()}
        append_record(args.output_file, make_record("latency", args.model, config, metrics, samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
