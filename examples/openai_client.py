"""Create a video with the official OpenAI SDK, wait for it, download it.

    helios-serve serve &                                  # helios-tiny on 127.0.0.1:8000
    python examples/openai_client.py "a lantern in the rain" -o lantern.mp4

Helios settings the SDK does not know (seed, frame count, pyramid steps, ...) go in
``extra_body``; the server answers with the seed it used, so a video can be made again.
"""

import argparse
import os

from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("-o", "--output", default="video.mp4")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--seconds", default="4", help="length: 4 s at 24 fps = 97 frames")
    parser.add_argument("--size", default="320x192", help="WIDTHxHEIGHT")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()

    # The SDK insists on a key; any value works unless the server was started with --api-key.
    client = OpenAI(base_url=args.base_url, api_key=os.environ.get("HELIOS_API_KEY", "unused"))
    extra = {"seed": args.seed} if args.seed is not None else {}
    video = client.videos.create_and_poll(prompt=args.prompt, seconds=args.seconds, size=args.size,
                                          extra_body=extra, poll_interval_ms=250)
    if video.status != "completed":
        raise SystemExit(f"video {video.id} {video.status}: {video.error.message if video.error else ''}")
    client.videos.download_content(video.id).write_to_file(args.output)
    print(f"{args.output}: {video.id}, {video.size}, {video.seconds} s, seed {getattr(video, 'seed', None)}")


if __name__ == "__main__":
    main()
