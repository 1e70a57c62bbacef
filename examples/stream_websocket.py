"""Receive a video over the realtime WebSocket while it is generated, writing it as it arrives.

    helios-serve serve &
    python examples/stream_websocket.py "waves on a cliff" --num-frames 330 -o waves.mp4

The server speaks vLLM-Omni's protocol: send ``session.start``, get ``video.start``, then for
each 33-frame chunk a ``video.chunk_metadata`` message followed by one binary message of
fragmented MP4 (the first also carries the init segment). Appended in order, the fragments
are a playable MP4 at every moment: open the file in a player before the session ends.
"""

import argparse
import asyncio
import json
import os
import time

import websockets


async def stream(args) -> None:
    key = os.environ.get("HELIOS_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with websockets.connect(args.url, additional_headers=headers, max_size=None) as ws:
        start = {"type": "session.start", "prompt": args.prompt, "num_frames": args.num_frames,
                 "width": args.width, "height": args.height, "fps": args.fps}
        if args.seed is not None:
            start["seed"] = args.seed
        await ws.send(json.dumps(start))
        began = time.monotonic()
        with open(args.output, "wb") as out:
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "video.start":
                    config = message["config"]
                    print(f"{message['request_id']}: {config['total_chunks']} chunks of {config['width']}x"
                          f"{config['height']} at {config['fps']} fps")
                elif message["type"] == "video.chunk_metadata":
                    out.write(await ws.recv())  # the fragment follows its metadata
                    out.flush()
                    print(f"chunk {message['generation_chunk_index']}: {message['num_frames']} frames, "
                          f"{message['byte_length']} bytes at {time.monotonic() - began:.2f} s")
                elif message["type"] == "session.done":
                    print(f"{message['status']}: {message['num_chunks']} chunks in {args.output}")
                    return
                elif message["type"] == "error":
                    raise SystemExit(f"server error {message.get('code')}: {message.get('message')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("-o", "--output", default="stream.mp4")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime/video")
    parser.add_argument("--num-frames", type=int, default=165)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--seed", type=int, default=None)
    asyncio.run(stream(parser.parse_args()))


if __name__ == "__main__":
    main()
