"""Throughput of N engine replicas on Ray Serve against one, on the same total work.

    python benchmarks/benchmark_replicas.py --replicas 1 2 --jobs 8 --num-frames 99 --size 192x128

For each replica count: starts `helios-serve serve helios-tiny --replicas N` (a local Ray) on
127.0.0.1, submits all jobs at once through the one endpoint, waits for every video, and
reports generated frames per second over the whole run (first submit to last completion) and
how the jobs spread over the replicas. On a machine with C cores, N replicas share those cores,
so N times the throughput is only possible with N times the hardware (e.g. one GPU each).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helios_serve.model_executor.step_io import chunk_frame_counts  # noqa: E402
from live_server import start_ray_server  # noqa: E402


def run_jobs(base: str, jobs: int, num_frames: int, size: str) -> float:
    """Submit all jobs at once, wait for all; returns the wall time in seconds."""

    def one(index: int) -> None:
        body = {"prompt": f"benchmark video {index}", "num_frames": num_frames, "size": size, "seed": index}
        created = httpx.post(f"{base}/v1/videos", json=body, timeout=60)
        created.raise_for_status()
        video_id = created.json()["id"]
        while (status := httpx.get(f"{base}/v1/videos/{video_id}", timeout=30).json()["status"]) != "completed":
            if status == "failed":
                raise RuntimeError(f"job {video_id} failed")
            time.sleep(0.1)

    started = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, range(jobs)))
    return time.perf_counter() - started


def measure(replicas: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        started = time.perf_counter()
        server = start_ray_server(data, replicas, "helios-tiny")
        startup = time.perf_counter() - started
        try:
            run_jobs(server.url, 1, 33, args.size)  # first-touch costs out of the measurement
            seconds = run_jobs(server.url, args.jobs, args.num_frames, args.size)
            owners = sqlite3.connect(data / "jobs.sqlite3").execute("SELECT owner FROM videos").fetchall()
        finally:
            server.stop()
    frames = args.jobs * sum(chunk_frame_counts(args.num_frames))
    spread = Counter(owner.rsplit("-", 1)[0] for (owner,) in owners)
    return {"replicas": replicas, "startup_s": round(startup, 1), "seconds": round(seconds, 2),
            "videos_per_minute": round(60 * args.jobs / seconds, 1), "jobs_per_replica": dict(spread),
            "frames_per_second": round(frames / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--num-frames", type=int, default=99)
    parser.add_argument("--size", default="192x128")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    results = [measure(n, args) for n in args.replicas]
    base = results[0]["seconds"]
    for result in results:
        result["speedup_vs_first"] = round(base / result["seconds"], 2)
    if args.json:
        print(json.dumps({"jobs": args.jobs, "num_frames": args.num_frames, "size": args.size, "runs": results}))
        return
    print(f"{args.jobs} jobs x {args.num_frames} frames at {args.size}, helios-tiny, submitted at once")
    print(f"{'replicas':>8} {'start s':>8} {'run s':>8} {'frames/s':>9} {'speedup':>8}  jobs per replica")
    for r in results:
        print(f"{r['replicas']:>8} {r['startup_s']:>8} {r['seconds']:>8} {r['frames_per_second']:>9} "
              f"{r['speedup_vs_first']:>8}  {r['jobs_per_replica']}")


if __name__ == "__main__":
    main()
