"""Every file in examples/ runs against helios-tiny and does what it says."""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import sys
from pathlib import Path

import av
import pytest
from live_server import start_server

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("examples") / "data")
    yield live
    live.stop()


def frames_in(path: Path) -> tuple[int, tuple[int, int]]:
    with av.open(io.BytesIO(path.read_bytes())) as container:
        frames = list(container.decode(video=0))
    return len(frames), (frames[0].width, frames[0].height)


def run(*command, timeout: float = 180, env=None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_openai_client(server, tmp_path):
    out = tmp_path / "sdk.mp4"
    done = run(sys.executable, EXAMPLES / "openai_client.py", "a lantern", "-o", out, "--base-url", server.api,
               "--seconds", "2", "--size", "192x128", "--seed", "5")
    assert frames_in(out) == (65, (192, 128)) and "seed 5" in done.stdout  # 2 s = 48 frames: 2 chunks, 4n+1


def test_stream_websocket_writes_a_playable_file_as_chunks_arrive(server, tmp_path):
    out = tmp_path / "ws.mp4"
    ws_url = server.url.replace("http://", "ws://") + "/v1/realtime/video"
    done = run(sys.executable, EXAMPLES / "stream_websocket.py", "waves", "-o", out, "--url", ws_url,
               "--num-frames", "99", "--width", "192", "--height", "128")
    assert done.stdout.count("chunk ") == 3 and "completed: 3 chunks" in done.stdout
    assert frames_in(out) == (97, (192, 128))


def test_stream_hls_records_the_live_playlist_with_ffmpeg(server, tmp_path):
    out = tmp_path / "hls.mp4"
    run(EXAMPLES / "stream_hls.sh", "a fox", out, env={"HELIOS_URL": server.url, "NUM_FRAMES": "198",
                                                         "SIZE": "192x128"})
    assert frames_in(out) == (197, (192, 128))


def test_offline_generate(tmp_path):
    out = tmp_path / "offline.mp4"
    done = run(sys.executable, EXAMPLES / "offline_generate.py", "a boat", "-o", out, "--num-frames", "66",
               "--height", "128", "--width", "192")
    assert frames_in(out) == (65, (192, 128)) and "chunk 1:" in done.stdout


def test_ray_cluster_commands_are_valid_helios_serve_commands():
    from helios_serve.cli import build_parser

    text = (EXAMPLES / "ray_cluster.md").read_text()
    commands = []
    for block in text.split("```bash")[1:]:
        lines = block.split("```")[0].replace("\\\n", " ").splitlines()
        commands += [line.strip() for line in lines if line.strip().startswith("helios-serve ")]
    assert len(commands) == 3
    for command in commands:
        words = shlex.split(command.replace('"$HELIOS_API_KEY"', "key"))
        args = build_parser().parse_args(words[1:])
        assert args.replicas >= 2, command
    # The local one is what tests/test_ray_serve.py deploys for real (two helios-tiny replicas).
