"""Watching videos while they are generated: SSE, the realtime WebSocket and HLS, on a live server."""

from __future__ import annotations

import asyncio
import io
import json
import time

import av
import httpx
import numpy as np

SMALL = {"size": "128x64"}


def decode(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def create(server, **fields) -> dict:
    response = httpx.post(f"{server.api}/videos", json={"prompt": "streaming", **SMALL, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def test_server_sent_events(server):
    job = create(server, num_frames=99, size="320x192")
    events = []
    with httpx.stream("GET", f"{server.api}/videos/{job['id']}/events", timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "completed" and events[-1][1]["status"] == "completed"
    assert [e["chunk_index"] for k, e in events if k == "chunk"] == [0, 1, 2]
    progress = [e["progress"] for k, e in events if k == "progress"]
    assert len(progress) >= 3 and progress == sorted(progress)
    # a subscriber arriving after the end hears the whole story at once
    late = httpx.get(f"{server.api}/videos/{job['id']}/events", timeout=10).text
    assert late.count("event: chunk") == 3 and "event: completed" in late
    assert [line for line in late.splitlines() if line.startswith(("id: ", "retry: "))] == [
        "retry: 2000", "id: 1", "id: 2", "id: 3"]
    # a client that reconnects with the last id it saw hears only what came after it
    resumed = httpx.get(f"{server.api}/videos/{job['id']}/events", headers={"Last-Event-ID": "2"}, timeout=10).text
    assert resumed.count("event: chunk") == 1 and '"chunk_index": 2' in resumed and "event: completed" in resumed


def test_a_waiting_event_stream_sends_keep_alive_comments(monkeypatch):
    """A queued job's stream carries comments while nothing happens (a proxy would cut it otherwise)."""
    from helios_serve.entrypoints.openai import streaming
    from helios_serve.jobs.status import JobStatus

    class QueuedJob:
        chunks_completed, total_chunks, status, request = 0, 3, JobStatus.QUEUED, {}

    class Jobs:
        def subscribe(self, job_id):
            return asyncio.Queue()

        def unsubscribe(self, job_id, queue):
            pass

        async def get(self, job_id):
            return QueuedJob()

        def live_progress(self, job_id):
            return None

    monkeypatch.setattr(streaming, "KEEPALIVE_S", 0.3)

    async def first_messages(count: int) -> list[bytes]:
        stream = streaming._event_stream(Jobs(), "video_x")
        messages = [await stream.__anext__() for _ in range(count)]
        await stream.aclose()
        return messages

    started = time.monotonic()
    messages = asyncio.run(first_messages(3))
    assert messages == [b"retry: 2000\n\n", b": keep-alive\n\n", b": keep-alive\n\n"]
    assert time.monotonic() - started >= 0.6


def test_realtime_websocket_protocol(server):
    import websockets

    async def session(stop_after_first: bool):
        uri = server.url.replace("http", "ws") + "/v1/realtime/video"
        messages, binary = [], []
        async with websockets.connect(uri, max_size=None) as ws:
            await ws.send(json.dumps({"type": "session.start", "prompt": "a websocket fox", "format": "m4s",
                                      "width": 128, "height": 64, "fps": 16,
                                      "num_frames": 660 if stop_after_first else 99, "seed": 2}))
            await ws.send(json.dumps({"type": "session.ping"}))
            async for message in ws:
                if isinstance(message, bytes):
                    binary.append(message)
                    if stop_after_first:
                        await ws.send(json.dumps({"type": "session.stop"}))
                    continue
                messages.append(json.loads(message))
        return messages, binary

    messages, binary = asyncio.run(session(stop_after_first=False))
    types = [m["type"] for m in messages]
    assert types[0] == "video.start" and types[-1] == "session.done" and "session.pong" in types
    assert messages[0]["config"]["fps"] == 16 and messages[0]["config"]["total_chunks"] == 3
    metadata = [m for m in messages if m["type"] == "video.chunk_metadata"]
    assert [m["generation_chunk_index"] for m in metadata] == [0, 1, 2]
    assert [m["byte_length"] for m in metadata] == [len(b) for b in binary]
    frames = decode(b"".join(binary))  # the binary frames concatenate into one playable fMP4
    assert frames.shape == (97, 64, 128, 3)
    assert messages[-1]["status"] == "completed" and messages[-1]["num_chunks"] == 3
    # the job is a normal video too: its MP4 has the same frames
    stored = httpx.get(f"{server.api}/videos/{messages[0]['request_id']}/content").content
    assert np.array_equal(decode(stored), frames)

    messages, binary = asyncio.run(session(stop_after_first=True))
    assert messages[-1]["type"] == "session.done" and messages[-1]["status"] == "cancelled"
    assert len(binary) < 20  # stopped long before its 20 chunks


def test_realtime_websocket_rejects_bad_sessions(server):
    import websockets

    async def first_reply(message: dict) -> dict:
        async with websockets.connect(server.url.replace("http", "ws") + "/v1/realtime/video") as ws:
            await ws.send(json.dumps(message))
            return json.loads(await ws.recv())

    reply = asyncio.run(first_reply({"type": "session.start", "prompt": "x", "num_frames": -3}))
    assert reply["type"] == "error" and "num_frames" in reply["message"]
    reply = asyncio.run(first_reply({"type": "hello"}))
    assert reply["type"] == "error" and "session.start" in reply["message"]


def test_hls_plays_while_generating(server):
    job = create(server, num_frames=330, size="320x192")
    playlist_url = f"{server.api}/videos/{job['id']}/stream.m3u8"
    decoded_while_running = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        playlist = httpx.get(playlist_url).text
        segments = [line for line in playlist.splitlines() if line.startswith("stream/seg_")]
        status = httpx.get(f"{server.api}/videos/{job['id']}").json()["status"]
        if segments and status == "in_progress" and decoded_while_running is None:
            init = httpx.get(f"{server.api}/videos/{job['id']}/stream/init.mp4").content
            media = b"".join(httpx.get(f"{server.api}/videos/{job['id']}/{s}").content for s in segments)
            decoded_while_running = decode(init + media)  # a player reading the live playlist
        if "#EXT-X-ENDLIST" in playlist:
            break
        time.sleep(0.05)
    assert decoded_while_running is not None and len(decoded_while_running) >= 33
    assert playlist.startswith("#EXTM3U") and '#EXT-X-MAP:URI="stream/init.mp4"' in playlist
    segments = [line for line in playlist.splitlines() if line.startswith("stream/seg_")]
    assert len(segments) == 10
    init = httpx.get(f"{server.api}/videos/{job['id']}/stream/init.mp4").content
    whole = decode(init + b"".join(httpx.get(f"{server.api}/videos/{job['id']}/{s}").content for s in segments))
    assert whole.shape == (329, 192, 320, 3)
    assert np.array_equal(whole[: len(decoded_while_running)], decoded_while_running)
    final = decode(httpx.get(f"{server.api}/videos/{job['id']}/content").content)
    assert np.array_equal(final, whole)


def test_segments_racing_a_delete_are_whole_or_404(server):
    """A player fetching segments while the video is deleted gets whole segments, then 404s:
    never a response cut short (browsers report that as ERR_CONTENT_LENGTH_MISMATCH)."""
    job = create(server, num_frames=3300, size="320x192")
    url = f"{server.api}/videos/{job['id']}/stream/init.mp4"
    deadline = time.monotonic() + 60
    while httpx.get(url).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    init = httpx.get(url).content

    async def fetch_until_gone(client: httpx.AsyncClient) -> list[int]:
        statuses = []
        while not statuses or statuses[-1] == 200:
            response = await client.get(url)  # httpx raises if a body is shorter than announced
            assert response.status_code in (200, 404) and (response.status_code == 404 or response.content == init)
            statuses.append(response.status_code)
        return statuses

    async def race() -> list[list[int]]:
        async with httpx.AsyncClient(timeout=30) as client:
            readers = [asyncio.create_task(fetch_until_gone(client)) for _ in range(4)]
            await asyncio.sleep(0.2)
            assert (await client.delete(f"{server.api}/videos/{job['id']}")).status_code == 200
            return await asyncio.gather(*readers)

    for statuses in asyncio.run(race()):
        assert statuses[0] == 200  # each reader was mid-stream when the delete came (it ends on a 404)
