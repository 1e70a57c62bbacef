"""What the HTTP layer costs: the same video through the engine directly and through the server.

    python benchmarks/benchmark_api_overhead.py --repeats 7

Starts `helios-serve serve` on 127.0.0.1 (helios-tiny), then interleaves, one request at a time:
  engine     HeliosEngine.generate in this process (its own model copy, same settings)
  sync HTTP  POST /v1/videos/sync (job record, fMP4 encode per chunk, final MP4 remux, download)
  WebSocket  time from session.start to the first binary fMP4 chunk (time to first streamed chunk)
Prints min and median of each; the API overhead is sync HTTP minus engine (it includes the
video encoding the engine alone does not do).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from live_server import start_server  # noqa: E402

from helios_serve import HeliosEngine, VideoSamplingParams  # noqa: E402


async def first_chunk_seconds(url: str, body: dict) -> float:
    import websockets

    async with websockets.connect(url.replace("http", "ws") + "/v1/realtime/video", max_size=None) as ws:
        started = time.perf_counter()
        await ws.send(json.dumps({"type": "session.start", "format": "m4s", **body}))
        async for message in ws:
            if isinstance(message, bytes):
                elapsed = time.perf_counter() - started
                await ws.send(json.dumps({"type": "session.stop"}))
                return elapsed
    raise RuntimeError("no chunk received")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--num-frames", type=int, default=66)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=192)
    args = parser.parse_args(argv)

    body = {"prompt": "overhead", "num_frames": args.num_frames, "size": f"{args.width}x{args.height}", "seed": 1}
    params = VideoSamplingParams(num_frames=args.num_frames, width=args.width, height=args.height, seed=1)
    engine = HeliosEngine()
    engine.generate("warm-up", params)
    times = {"engine": [], "sync_http": [], "ws_first_chunk": []}
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "data")
        try:
            httpx.post(f"{server.api}/videos/sync", json=body, timeout=120)  # warm-up
            for _ in range(args.repeats):
                started = time.perf_counter()
                engine.generate("overhead", params)
                times["engine"].append(time.perf_counter() - started)
                started = time.perf_counter()
                response = httpx.post(f"{server.api}/videos/sync", json=body, timeout=120)
                times["sync_http"].append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
                times["ws_first_chunk"].append(asyncio.run(first_chunk_seconds(server.url, body)))
        finally:
            server.stop()
    for name, values in times.items():
        print(f"{name:<15} min {min(values) * 1000:8.1f} ms   median {statistics.median(values) * 1000:8.1f} ms")
    overhead = min(times["sync_http"]) - min(times["engine"])
    print(f"API overhead (sync HTTP - engine, min): {overhead * 1000:.1f} ms for {args.num_frames} frames "
          f"at {args.width}x{args.height}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
