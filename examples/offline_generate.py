"""Generate a video in this process with the Python engine API: no server, no HTTP.

    python examples/offline_generate.py "a paper boat on a stream" --num-frames 165 -o boat.mp4

``HeliosEngine.stream`` hands out each 33-frame chunk as soon as it is decoded, so the MP4 is
written while the video is made and memory stays flat however long the video is.
"""

import argparse
import time

from helios_serve import HeliosEngine, VideoSamplingParams
from helios_serve.video_io import Mp4Writer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("-o", "--output", default="offline.mp4")
    parser.add_argument("--model", default="helios-tiny", help="helios-tiny, helios-distilled, a checkpoint folder")
    parser.add_argument("--num-frames", type=int, default=165)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    engine = HeliosEngine(model=args.model)
    params = VideoSamplingParams(num_frames=args.num_frames, height=args.height, width=args.width, seed=args.seed)
    started, frames = time.monotonic(), 0
    with Mp4Writer(args.output, fps=24) as writer:
        for chunk in engine.stream(args.prompt, params):
            writer.write(chunk.frames)
            frames += len(chunk.frames)
            print(f"chunk {chunk.chunk_index}: {len(chunk.frames)} frames at {time.monotonic() - started:.2f} s")
    print(f"{args.output}: {frames} frames of {args.width}x{args.height} in {time.monotonic() - started:.2f} s")


if __name__ == "__main__":
    main()
