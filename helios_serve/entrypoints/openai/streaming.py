"""Watching a video while it is made: Server-Sent Events and an HLS live playlist.

SSE (GET /v1/videos/{id}/events): ``progress`` events as the engine steps, ``chunk`` events as
chunks are written, then ``completed`` or ``failed``. HLS (GET /v1/videos/{id}/stream.m3u8):
an EVENT playlist of fMP4 segments, one per chunk, that grows as chunks arrive and ends with
#EXT-X-ENDLIST; any HLS player can play the video while it is generated.
"""

from __future__ import annotations

import asyncio
import json
import math
import re

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from ...model_executor.step_io import chunk_frame_counts
from .errors import ApiError

PROGRESS_INTERVAL_S = 0.1
SEGMENT_NAME = re.compile(r"^(init\.mp4|seg_\d{5}\.m4s)$")


def install_streaming(app: FastAPI, state, auth) -> None:
    @app.get("/v1/videos/{video_id}/events", dependencies=auth)
    async def events(video_id: str) -> StreamingResponse:
        service = state.require_service()
        service.get(video_id)
        return StreamingResponse(_event_stream(service, video_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/videos/{video_id}/stream.m3u8", dependencies=auth)
    async def playlist(video_id: str, request: Request) -> Response:
        service = state.require_service()
        record = service.get(video_id)
        if record.status == "failed":
            raise ApiError(409, "video_failed", f"video {video_id} failed: {record.error_message}", "video_id")
        key = request.query_params.get("api_key")
        text = hls_playlist(record.chunks_completed, record.num_frames, record.fps, record.status == "completed",
                            f"?api_key={key}" if key else "")
        return Response(text, media_type="application/vnd.apple.mpegurl", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/videos/{video_id}/stream/{name}", dependencies=auth)
    async def segment(video_id: str, name: str) -> Response:
        service = state.require_service()
        service.get(video_id)
        missing = ApiError(404, "not_found", f"no segment {name!r} (yet) for video {video_id}", "name")
        if not SEGMENT_NAME.match(name):
            raise missing
        # Read whole before any header goes out: a DELETE racing this request then yields a 404,
        # never a response cut short of its Content-Length. A segment is one chunk, so it is small.
        try:
            data = await asyncio.to_thread((service.files.job_dir(video_id) / name).read_bytes)
        except FileNotFoundError:
            raise missing from None
        return Response(data, media_type="video/mp4" if name.endswith(".mp4") else "video/iso.segment")


def hls_playlist(chunks_done: int, num_frames: int, fps: int, complete: bool, query: str = "") -> str:
    counts = chunk_frame_counts(num_frames)
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{math.ceil(max(counts) / fps)}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:EVENT",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f'#EXT-X-MAP:URI="stream/init.mp4{query}"',
    ]
    for index in range(chunks_done):
        lines += [f"#EXTINF:{counts[index] / fps:.3f},", f"stream/seg_{index:05d}.m4s{query}"]
    if complete:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def _event_stream(service, video_id: str):
    queue = service.subscribe(video_id)
    try:
        record = service.get(video_id)
        for index in range(record.chunks_completed):  # a late subscriber first hears the chunks so far
            yield _sse("chunk", {"chunk_index": index, "total_chunks": record.total_chunks})
        if record.status in ("completed", "failed"):
            yield _final(service.view(record))
            return
        last_progress = -1
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), timeout=PROGRESS_INTERVAL_S)
            except asyncio.TimeoutError:
                event = None
            progress = service.live_progress(video_id)
            if progress is not None and progress != last_progress:
                last_progress = progress
                yield _sse("progress", {"id": video_id, "progress": progress})
            if event is None:
                continue
            if event["type"] == "chunk":
                yield _sse("chunk", {k: v for k, v in event.items() if k != "type"})
            else:
                record = service.store.get(video_id)
                yield _final(service.view(record)) if record else _sse("failed", event["error"])
                return
    finally:
        service.unsubscribe(video_id, queue)


def _final(view) -> bytes:
    return _sse("completed" if view.status == "completed" else "failed", view.model_dump())
