"""A video of any length streams in constant memory, and its first chunk comes as fast as a short one's.

Peak RSS is measured in a fresh process per video. At 192x320 the 1449 frames of the long
video are 267 MB of uint8: keeping them anywhere would push its peak far past the 15% bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).with_name("_engine_probe.py")


def probe(*args) -> dict:
    out = subprocess.run([sys.executable, str(PROBE), *map(str, args)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_long_video_holds_constant_memory():
    short, long = probe("rss", 66), probe("rss", 1452)
    assert (short["frames"], long["frames"]) == (65, 1449)
    print(f"peak RSS short {short['peak_rss_mb']:.0f} MB, long {long['peak_rss_mb']:.0f} MB")
    assert long["peak_rss_mb"] <= 1.15 * short["peak_rss_mb"]


def test_time_to_first_chunk_does_not_grow_with_length():
    times = probe("ttfc", 66, 1452)  # interleaved in one process; min of 5 against noise
    short, long = min(times["short_s"]), min(times["long_s"])
    print(f"TTFC short {short:.3f} s, long {long:.3f} s")
    assert long <= 1.2 * short
