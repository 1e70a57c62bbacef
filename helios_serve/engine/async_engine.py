"""AsyncHeliosEngine: the engine for servers. A background thread steps the engine; each
request's chunks arrive on its own asyncio queue the moment they are decoded.

    engine = AsyncHeliosEngine(model="helios-tiny")
    async for chunk in engine.generate("a fox", VideoSamplingParams(num_frames=99)):
        send(chunk.frames)

Steps run in a thread so the event loop stays responsive during forwards; requests are
added and cancelled from the loop under the engine core's lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import AsyncIterator

from ..model_executor.step_io import RequestSpec
from ..outputs import VideoChunkOutput
from ..request import Request, RequestStatus
from ..sampling_params import VideoSamplingParams
from .engine import raise_for_status
from .engine_core import EngineFront

_FINISHED = object()  # end-of-stream marker on a request's queue
logger = logging.getLogger(__name__)


class AsyncHeliosEngine(EngineFront):
    def __init__(self, *args, **kwargs):
        """The same options as HeliosEngine; starts the background step thread."""
        super().__init__(*args, **kwargs)
        self._wake = threading.Event()
        # request id -> (its request, the loop of its consumer, its chunk queue)
        self._streams: dict[str, tuple[Request, asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="helios-engine", daemon=True)
        self._thread.start()

    # -- requests ----------------------------------------------------------------------------
    def add_request(
        self,
        spec: RequestSpec,
        request_id: str | None = None,
        priority: int = 0,
        realtime_fps: float | None = None,
        timeout_s: float | None = None,
    ) -> tuple[Request, asyncio.Queue]:
        """Submit; raises QueueFullError / ValueError at once. Returns the request and its chunk queue."""
        request_id = request_id or uuid.uuid4().hex
        queue: asyncio.Queue = asyncio.Queue()
        request = self.core.add_request(request_id, spec, priority, realtime_fps, timeout_s)
        self._streams[request_id] = (request, asyncio.get_running_loop(), queue)
        self._wake.set()
        return request, queue

    async def generate(
        self,
        prompt: str,
        params: VideoSamplingParams | None = None,
        request_id: str | None = None,
        priority: int = 0,
        realtime_fps: float | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[VideoChunkOutput]:
        """Chunks of one video as they are decoded. Leaving the loop early cancels the request."""
        spec = self.resolve(prompt, params or VideoSamplingParams())
        request, queue = self.add_request(spec, request_id, priority, realtime_fps, timeout_s)
        try:
            async for chunk in self.chunks(request, queue):
                yield chunk
        finally:
            if not request.status.is_finished:
                self.abort(request.request_id)

    async def chunks(self, request: Request, queue: asyncio.Queue) -> AsyncIterator[VideoChunkOutput]:
        while True:
            item = await queue.get()
            if item is _FINISHED:
                raise_for_status(request)
                return
            yield item

    def abort(self, request_id: str) -> Request | None:
        """Cancel a request; its slot is free for the next step. None if unknown or already done."""
        request = self.core.abort_request(request_id)
        if request is not None:
            self._deliver(request_id, _FINISHED, final=True)
            self._wake.set()
        return request

    def queue_depth(self) -> tuple[int, int]:
        """(waiting, running) requests."""
        with self.core.lock:
            return len(self.core.scheduler.waiting), len(self.core.scheduler.running)

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=30)

    # -- the step loop (engine thread) ---------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopped:
            if not self.core.has_unfinished():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                step = self.core.step()
            except Exception:  # noqa: BLE001 - a bug in the engine itself: fail everything, keep serving
                logger.exception("engine step failed; failing all running requests")
                self._fail_everything()
                continue
            for chunk in step.chunks:
                target = self._streams.get(chunk.request_id)
                if target is not None:
                    num_chunks = target[0].spec.num_chunks
                    item = VideoChunkOutput(chunk.request_id, chunk.chunk_index, num_chunks, chunk.frames, chunk.resume_state)
                    self._deliver(chunk.request_id, item)
            for request in step.finished:
                self._deliver(request.request_id, _FINISHED, final=True)

    def _fail_everything(self) -> None:
        with self.core.lock:
            scheduler = self.core.scheduler
            requests = [*scheduler.waiting, *scheduler.running.values()]
            for request in requests:
                scheduler.abort_request(request.request_id, RequestStatus.FINISHED_FAILED)
                request.error = "internal engine error"
        for request in requests:
            self._deliver(request.request_id, _FINISHED, final=True)

    def _deliver(self, request_id: str, item, final: bool = False) -> None:
        target = self._streams.pop(request_id, None) if final else self._streams.get(request_id)
        if target is not None:
            _, loop, queue = target
            loop.call_soon_threadsafe(queue.put_nowait, item)
