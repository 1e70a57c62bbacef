"""Run in a fresh process by test_engine_memory.py (helios-tiny, 192x320).

    python _engine_probe.py rss NUM_FRAMES   stream one video; print {"frames", "peak_rss_mb"}
    python _engine_probe.py ttfc SHORT LONG  time to first chunk of both lengths, interleaved
                                             5 times; print {"short_s": [...], "long_s": [...]}
"""

import json
import resource
import sys
import time

from helios_serve import HeliosEngine, VideoSamplingParams


def params(num_frames: int) -> VideoSamplingParams:
    return VideoSamplingParams(num_frames=num_frames, height=192, width=320, seed=0)


def time_to_first_chunk(engine: HeliosEngine, num_frames: int) -> float:
    started = time.perf_counter()
    stream = engine.stream("a lantern", params(num_frames))
    next(stream)
    elapsed = time.perf_counter() - started
    stream.close()  # cancels the rest
    return elapsed


def main() -> None:
    mode, *sizes = sys.argv[1:]
    engine = HeliosEngine()
    list(engine.stream("warm-up", params(33)))  # first-touch costs of every shape
    if mode == "rss":
        frames = sum(len(chunk.frames) for chunk in engine.stream("a lantern", params(int(sizes[0]))))
        print(json.dumps({"frames": frames, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    else:
        short, long = int(sizes[0]), int(sizes[1])
        times = {"short_s": [], "long_s": []}
        for _ in range(5):
            times["short_s"].append(time_to_first_chunk(engine, short))
            times["long_s"].append(time_to_first_chunk(engine, long))
        print(json.dumps(times))


if __name__ == "__main__":
    main()
