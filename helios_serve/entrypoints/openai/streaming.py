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

from ...errors import JobConflictError
from ...jobs.status import ChunkReady, JobStatus
from ...model_executor.step_io import chunk_frame_counts
from .errors import ApiError
from .protocol import video_object

PROGRESS_INTERVAL_S = 0.1
SEGMENT_NAME = re.compile(r"^(init\.mp4|seg_\d{5}\.m4s)$")


def install_streaming(app: FastAPI, state, auth) -> None:
    @app.get("/v1/videos/{video_id}/events", dependencies=auth)
    async def events(video_id: str) -> StreamingResponse:
        jobs = state.require_jobs()
        jobs.get(video_id)
        return StreamingResponse(_event_stream(jobs, video_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/videos/{video_id}/stream.m3u8", dependencies=auth)
    async def playlist(video_id: str, request: Request) -> Response:
        record = state.require_jobs().get(video_id)
        if record.status is JobStatus.FAILED:
            raise JobConflictError(f"video {video_id} failed: {record.error_message}", "video_failed")
        key = request.query_params.get("api_key")
        text = hls_playlist(record.chunks_completed, record.num_frames, record.fps,
                            record.status is JobStatus.COMPLETED, f"?api_key={key}" if key else "")
        return Response(text, media_type="application/vnd.apple.mpegurl", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/videos/{video_id}/stream/{name}", dependencies=auth)
    async def segment(video_id: str, name: str) -> Response:
        jobs = state.require_jobs()
        jobs.get(video_id)
        missing = ApiError(404, "not_found", f"no segment {name!r} (yet) for video {video_id}", "name")
        if not SEGMENT_NAME.match(name):
            raise missing
        # Read whole before any header goes out: a DELETE racing this request then yields a 404,
        # never a response cut short of its Content-Length. A segment is one chunk, so it is small.
        try:
            data = await asyncio.to_thread((jobs.files.job_dir(video_id) / name).read_bytes)
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


async def _event_stream(jobs, video_id: str):
    queue = jobs.subscribe(video_id)
    try:
        record = jobs.get(video_id)
        for index in range(record.chunks_completed):  # a late subscriber first hears the chunks so far
            yield _sse("chunk", {"chunk_index": index, "total_chunks": record.total_chunks})
        if record.status.is_final:
            yield _final(video_object(jobs, record))
            return
        last_progress = -1
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), timeout=PROGRESS_INTERVAL_S)
            except asyncio.TimeoutError:
                event = None
            progress = jobs.live_progress(video_id)
            if progress is not None and progress != last_progress:
                last_progress = progress
                yield _sse("progress", {"id": video_id, "progress": progress})
            if event is None:
                continue
            if isinstance(event, ChunkReady):
                yield _sse("chunk", {"chunk_index": event.chunk_index, "num_frames": event.num_frames,
                                     "total_chunks": event.total_chunks})
                continue
            record = jobs.store.get(video_id)
            if record is None:  # deleted
                yield _sse(JobStatus.FAILED, {"code": event.error_code, "message": event.error_message})
            else:
                yield _final(video_object(jobs, record))
            return
    finally:
        jobs.unsubscribe(video_id, queue)


def _final(view) -> bytes:
    """The job's final event, named by its status (completed or failed), carrying the job object."""
    return _sse(view.status, view.model_dump())
