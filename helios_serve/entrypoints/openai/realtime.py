"""WS /v1/realtime/video: vLLM-Omni's streaming video protocol, so its clients work unchanged.

client: {"type": "session.start", prompt, width, height, fps, num_frames, ..., "format": "m4s"}
(real-time at fps; without num_frames a live stream until session.stop, paced with
pace_to_media_time, pacing_lead_seconds and pacing_max_lag_seconds as vLLM-Omni's)
server: {"type": "video.start", ...}; per chunk {"type": "video.chunk_metadata", ...} then one
binary frame of fragmented MP4 (the first carries the init segment too, so the concatenated
frames are one playable file); finally {"type": "session.done", ...}.
client may send session.ping (-> session.pong) and session.stop (cancels the generation), and
session.interaction with event.prompt (-> session.interaction.queued with applies_from_chunk):
the video follows the new prompt from its next chunk not begun.
A browser may open it only from the server's own pages or an --allowed-origins origin
(web_safety.py refuses the handshake otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from ...errors import JobNotFoundError
from ...jobs.status import CANCELLED, ChunkReady, JobStatus, PromptChanged
from .body import parse_json
from .errors import ERROR_TABLE, ApiError, api_error, public_message
from .protocol import VideoCreateRequest

START_TIMEOUT_S = 10.0
SESSION_FIELDS_IGNORED = {"type", "format"}


def install_realtime(app: FastAPI, state) -> None:
    @app.websocket("/v1/realtime/video")
    async def realtime_video(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            state.authorize(websocket)
        except ApiError as exc:
            await _error_and_close(websocket, exc.code, exc.message)
            return
        try:
            await Session(websocket, state).run()
        except WebSocketDisconnect:
            pass


async def _error_and_close(websocket: WebSocket, code: str, message: str) -> None:
    await websocket.send_json({"type": "error", "code": code, "message": public_message(message)})
    await websocket.close()


async def _receive_message(websocket: WebSocket):
    """The client's next message, parsed as JSON no deeper than body.py allows (ApiError)."""
    return parse_json(await websocket.receive_text(), "the message")


class Session:
    def __init__(self, websocket: WebSocket, state):
        self.websocket, self.state = websocket, state
        self.job_id: str | None = None

    async def run(self) -> None:
        try:
            message = await asyncio.wait_for(_receive_message(self.websocket), timeout=START_TIMEOUT_S)
        except ApiError as exc:
            await _error_and_close(self.websocket, exc.code, exc.message)
            return
        except (asyncio.TimeoutError, KeyError):
            await _error_and_close(self.websocket, "invalid_request", "expected a session.start message")
            return
        if not isinstance(message, dict) or message.get("type") != "session.start":
            await _error_and_close(self.websocket, "invalid_request", "the first message must be session.start")
            return
        if message.get("format", "m4s") != "m4s":
            await _error_and_close(self.websocket, "invalid_request", "only format 'm4s' (fragmented MP4) is served")
            return
        try:
            fields = {k: v for k, v in message.items() if k not in SESSION_FIELDS_IGNORED}
            if "width" in fields or "height" in fields:
                fields["size"] = f"{fields.pop('width', 0)}x{fields.pop('height', 0)}"
            # A session plays at its fps: real-time, and without num_frames or seconds a live stream
            # that runs until session.stop (or the server's --max-stream-seconds).
            fields.setdefault("realtime", True)
            record = await self.state.create_job(VideoCreateRequest.model_validate(fields), {})
        except ValidationError as exc:
            first = exc.errors()[0]
            await _error_and_close(self.websocket, "invalid_value", f"{'.'.join(map(str, first['loc']))}: {first['msg']}")
            return
        except (ApiError, *ERROR_TABLE) as exc:
            error = api_error(exc)
            await _error_and_close(self.websocket, error.code, error.message)
            return
        self.job_id = record.id
        await self.stream(self.state.jobs, record)

    async def stream(self, jobs, record) -> None:
        events = jobs.subscribe(record.id)
        listener = asyncio.create_task(self._listen(jobs))
        await self.websocket.send_json({
            "type": "video.start", "request_id": record.id, "format": "m4s",
            "config": {"width": record.width, "height": record.height, "fps": record.fps,
                       "num_frames": record.num_frames, "total_chunks": record.total_chunks,
                       "live": bool(record.request.get("live"))},
        })
        sent = 0
        try:
            while isinstance(event := await events.get(), (ChunkReady, PromptChanged)):
                if isinstance(event, ChunkReady):  # a prompt change was answered by _listen
                    await self._send_chunk(jobs, record.id, event)
                    sent += 1
            # vLLM-Omni's session.done names a stopped session "cancelled": our failed job with that code.
            status = CANCELLED if event.error_code == CANCELLED else event.status
            if status is JobStatus.FAILED:
                await self.websocket.send_json({"type": "error", "code": event.error_code,
                                                "message": public_message(event.error_message or "")})
            await self.websocket.send_json({"type": "session.done", "status": status, "request_id": record.id,
                                            "num_chunks": sent})
            await self.websocket.close()
        finally:
            listener.cancel()
            jobs.unsubscribe(record.id, events)

    async def _send_chunk(self, jobs, job_id: str, event: ChunkReady) -> None:
        index = event.chunk_index
        try:
            data = jobs.files.segment(job_id, index).read_bytes()
        except FileNotFoundError:  # a live stream's segment left its window: this client fell that far behind
            return
        if index == 0:
            data = jobs.files.init_segment(job_id).read_bytes() + data
        await self.websocket.send_json({"type": "video.chunk_metadata", "generation_chunk_index": index,
                                        "num_frames": event.num_frames, "byte_length": len(data)})
        await self.websocket.send_bytes(data)

    async def _listen(self, jobs) -> None:
        """Client messages during generation: ping, stop; a disconnect cancels too."""
        try:
            while True:
                message = await _receive_message(self.websocket)
                kind = message.get("type") if isinstance(message, dict) else None
                if kind == "session.ping":
                    await self.websocket.send_json({"type": "session.pong"})
                elif kind == "session.stop":
                    await jobs.delete(self.job_id)
                    return
                elif kind == "session.interaction":
                    await self.websocket.send_json(await self._interaction(jobs, message))
        except (WebSocketDisconnect, RuntimeError, ApiError):
            with contextlib.suppress(JobNotFoundError):
                if self.job_id and jobs.live_progress(self.job_id) is not None:
                    await jobs.delete(self.job_id)

    async def _interaction(self, jobs, message: dict) -> dict:
        """vLLM-Omni's session.interaction: ``event.prompt`` becomes the video's prompt from its
        next chunk not begun (blended in over ``transition_chunks``). Its fields may also come
        nested in ``interaction``. Other events (camera, actions) are not taken by this model."""
        nested = message.get("interaction")
        fields = {**message, **nested} if isinstance(nested, dict) else message
        event_id = fields.get("event_id")
        event = fields.get("event") if isinstance(fields.get("event"), dict) else {}
        prompt = event.get("prompt", fields.get("prompt"))
        if prompt is None:
            given = ", ".join(sorted(str(key) for key in event)) or "nothing"
            return {"type": "error", "code": "interaction_failed", "event_id": event_id,
                    "message": f"only prompt interactions are supported (event.prompt); this one gave {given}"}
        transition = fields.get("transition_chunks", event.get("transition_chunks", 0))
        try:
            from_chunk, _ = await jobs.switch_prompt(self.job_id, prompt, transition)
        except tuple(ERROR_TABLE) as exc:
            error = api_error(exc)
            return {"type": "error", "code": "interaction_failed", "event_id": event_id,
                    "message": public_message(error.message), "param": error.param}
        return {"type": "session.interaction.queued", "event_id": event_id, "applies_from_chunk": from_chunk,
                "prompt": prompt, "transition_chunks": transition}
