"""Watching a video while it is made: Server-Sent Events and an HLS live playlist.

SSE (GET /v1/videos/{id}/events): ``progress`` events as the engine steps, ``chunk`` events as
chunks are written, ``prompt`` events when the prompt changes
(POST /v1/videos/{id}/prompt), then ``completed`` or ``failed``. HLS (GET /v1/videos/{id}/stream.m3u8):
an EVENT playlist of fMP4 segments, one per chunk, that grows as chunks arrive and ends with
#EXT-X-ENDLIST; any HLS player can play the video while it is generated. A live stream's
playlist is a sliding window of its last LIVE_PLAYLIST_SEGMENTS segments (older ones are deleted).

A player fetches the playlist's segments without our headers, so on a server with an API key
each segment URI carries a short-lived token signed for that video (``StreamTokens``), never
the key itself; GET /v1/videos/{id}/stream_url gives a playlist URL with one, for players that
cannot send the key at all (the playground's native-HLS fallback).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import re
import time
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from ...errors import JobConflictError
from ...jobs.status import ChunkReady, JobStatus, PromptChanged
from ...jobs.sink import LIVE_PLAYLIST_SEGMENTS
from ...model_executor.step_io import chunk_frame_counts
from .errors import ApiError, public_message
from .protocol import video_object

PROGRESS_INTERVAL_S = 0.1
KEEPALIVE_S = 15.0
"""An SSE comment goes out after this long without an event, so a proxy's idle timeout (often 30
to 60 s) never cuts the stream of a job that waits in the queue."""
RECONNECT_MS = 2000
"""The ``retry:`` a browser's EventSource waits before reconnecting (with Last-Event-ID)."""
SEGMENT_NAME = re.compile(r"^(init\.mp4|seg_\d{5}\.m4s)$")
STREAM_TOKEN_TTL_S = 3600
"""How long a stream token is good for. Each playlist fetch signs its segment URIs afresh; a
stream_url's own token bounds how long one player may follow the playlist."""


class StreamTokens:
    """Tokens that open one video's playlist and segments until they expire:
    ``EXPIRY.SIGNATURE``, the signature an HMAC-SHA256 of the video id and the expiry.

    The secret is derived from the API key, so every replica of a Ray deployment and a restarted
    server accept the same tokens, and changing the key revokes them all. Without a key nothing
    is signed: the stream needs no authorization then."""

    def __init__(self, api_key: str | None, clock=time.time):
        self.clock = clock
        self.secret = hmac.new(api_key.encode(), b"helios-serve stream token", hashlib.sha256).digest() \
            if api_key is not None else None

    @property
    def enabled(self) -> bool:
        return self.secret is not None

    def issue(self, video_id: str) -> tuple[str, int]:
        """(token, its expiry in Unix seconds)."""
        expires = int(self.clock()) + STREAM_TOKEN_TTL_S
        return f"{expires}.{self._signature(video_id, expires)}", expires

    def valid(self, video_id: str, token: str) -> bool:
        expiry, _, signature = token.partition(".")
        if not self.enabled or not expiry.isdigit() or len(expiry) > 12 or int(expiry) < self.clock():
            return False
        return hmac.compare_digest(signature.encode(), self._signature(video_id, int(expiry)).encode())

    def _signature(self, video_id: str, expires: int) -> str:
        digest = hmac.new(self.secret, f"{video_id}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def install_streaming(app: FastAPI, state, auth) -> None:
    tokens = StreamTokens(state.config.server.api_key)

    def authorize_stream(video_id: str, request: Request) -> None:
        """A token signed for this video opens its playlist and segments; else the API key."""
        token = request.query_params.get("token")
        if token is None or not tokens.valid(video_id, token):
            state.authorize(request)

    def token_query(video_id: str) -> tuple[str, int | None]:
        """(the query that opens this video's stream, or "" without a key; when it expires)."""
        if not tokens.enabled:
            return "", None
        token, expires = tokens.issue(video_id)
        return "?" + urlencode({"token": token}), expires

    stream_auth = [Depends(authorize_stream)]

    @app.get("/v1/videos/{video_id}/events", dependencies=auth)
    async def events(video_id: str, request: Request) -> StreamingResponse:
        """Server-sent events. Each chunk event's ``id`` is the number of chunks announced so far;
        a client that reconnects with ``Last-Event-ID`` hears only the chunks after it."""
        jobs = state.require_jobs()
        await jobs.get(video_id)
        seen = _chunks_seen(request.headers.get("last-event-id"))
        return StreamingResponse(_event_stream(jobs, video_id, seen), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/videos/{video_id}/stream_url", dependencies=auth)
    async def stream_url(video_id: str) -> dict:
        """The playlist's URL (relative to the server) with a token in it, for a player that
        cannot send the API key; it works for STREAM_TOKEN_TTL_S seconds."""
        await state.require_jobs().get(video_id)
        query, expires = token_query(video_id)
        return {"url": f"/v1/videos/{video_id}/stream.m3u8{query}", "expires_at": expires}

    @app.get("/v1/videos/{video_id}/stream.m3u8", dependencies=stream_auth)
    async def playlist(video_id: str) -> Response:
        record = await state.require_jobs().get(video_id)
        if record.status is JobStatus.FAILED:
            raise JobConflictError(f"video {video_id} failed: {record.error_message}", "video_failed")
        text = hls_playlist(record.chunks_completed, record.num_frames, record.fps,
                            record.status is JobStatus.COMPLETED, token_query(video_id)[0],
                            window=LIVE_PLAYLIST_SEGMENTS if _sliding(record) else None)
        return Response(text, media_type="application/vnd.apple.mpegurl", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/videos/{video_id}/stream/{name}", dependencies=stream_auth)
    async def segment(video_id: str, name: str) -> Response:
        jobs = state.require_jobs()
        await jobs.get(video_id)
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


def _sliding(record) -> bool:
    """A live stream that keeps only its last segments (one with ``keep`` keeps them all)."""
    return bool(record.request.get("live")) and not record.request.get("keep")


PLAYLIST_QUERY = re.compile(r"(\?[\w.~%=&-]*)?", re.ASCII)
"""What may follow a URI in the playlist: a URL-encoded query (no quote, no line break)."""


def hls_playlist(chunks_done: int, num_frames: int, fps: int, complete: bool, query: str = "",
                 window: int | None = None) -> str:
    """The video's playlist: an EVENT playlist of every segment so far, or with ``window`` (a
    live stream) a sliding live playlist of the last ``window`` segments, whose media sequence
    number is its first segment's index."""
    if not PLAYLIST_QUERY.fullmatch(query):  # it would end the URI, or the line, and add playlist lines
        raise ValueError(f"not a URL-encoded query: {query!r}")
    counts = chunk_frame_counts(num_frames)
    first = 0 if window is None else max(0, chunks_done - window)
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{math.ceil(max(counts) / fps)}",
        f"#EXT-X-MEDIA-SEQUENCE:{first}",
        *(["#EXT-X-PLAYLIST-TYPE:EVENT"] if window is None else []),
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f'#EXT-X-MAP:URI="stream/init.mp4{query}"',
    ]
    for index in range(first, chunks_done):
        lines += [f"#EXTINF:{counts[index] / fps:.3f},", f"stream/seg_{index:05d}.m4s{query}"]
    if complete:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def _sse(event: str, data: dict, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _chunks_seen(last_event_id: str | None) -> int:
    """Chunks a reconnecting client has already heard (its Last-Event-ID; 0 when absent or not ours)."""
    try:
        return max(0, int(last_event_id or 0))
    except ValueError:
        return 0


async def _event_stream(jobs, video_id: str, chunks_seen: int = 0):
    queue = jobs.subscribe(video_id)
    try:
        record = await jobs.get(video_id)
        yield f"retry: {RECONNECT_MS}\n\n".encode()
        # A late subscriber first hears the chunks so far (a live stream's: those of its playlist),
        # a reconnecting one those after its Last-Event-ID.
        window = LIVE_PLAYLIST_SEGMENTS if _sliding(record) else record.chunks_completed
        for index in range(max(0, record.chunks_completed - window, chunks_seen), record.chunks_completed):
            yield _sse("chunk", {"chunk_index": index, "total_chunks": record.total_chunks}, index + 1)
        if record.status.is_final:
            yield _final(video_object(jobs, record))
            return
        last_progress, last_sent = -1, time.monotonic()
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), timeout=PROGRESS_INTERVAL_S)
            except asyncio.TimeoutError:
                event = None
            progress = jobs.live_progress(video_id)
            if progress is not None and progress != last_progress:
                last_progress, last_sent = progress, time.monotonic()
                yield _sse("progress", {"id": video_id, "progress": progress})
            if event is None:
                if time.monotonic() - last_sent >= KEEPALIVE_S:
                    last_sent = time.monotonic()
                    yield b": keep-alive\n\n"
                continue
            last_sent = time.monotonic()
            if isinstance(event, ChunkReady):
                if event.chunk_index >= chunks_seen:
                    yield _sse("chunk", {"chunk_index": event.chunk_index, "num_frames": event.num_frames,
                                         "total_chunks": event.total_chunks}, event.chunk_index + 1)
                continue
            if isinstance(event, PromptChanged):
                yield _sse("prompt", {"from_chunk": event.from_chunk, "prompt": event.prompt,
                                      "transition_chunks": event.transition_chunks})
                continue
            record = await jobs.find(video_id)
            if record is None:  # deleted
                message = public_message(event.error_message or "")
                yield _sse(JobStatus.FAILED, {"code": event.error_code, "message": message})
            else:
                yield _final(video_object(jobs, record))
            return
    finally:
        jobs.unsubscribe(video_id, queue)


def _final(view) -> bytes:
    """The job's final event, named by its status (completed or failed), carrying the job object."""
    return _sse(view.status, view.model_dump())
