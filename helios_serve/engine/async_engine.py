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
from dataclasses import dataclass

from ..errors import EngineDeadError
from ..model_executor.step_io import RequestSpec
from ..outputs import VideoChunkOutput
from ..request import Pacing, Request, RequestStatus
from ..sampling_params import VideoSamplingParams
from .engine import raise_for_status
from .engine_core import EngineFront

_FINISHED = object()  # end-of-stream marker on a request's queue
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestProgress:
    """One consistent reading of a request, taken under the engine lock."""

    request_id: str
    status: RequestStatus
    fraction_done: float
    """Units done over all units (encode, steps, stage transitions, decodes)."""
    queue_time_s: float | None
    """Arrival to admission; None while it waits."""
    error: str | None


class RequestHandle:
    """What a caller holds for a submitted request: its id, its chunk stream and consistent
    readings of its progress. The scheduler's live record stays inside the engine."""

    def __init__(self, request: Request, lock: threading.Lock, queue: asyncio.Queue):
        self.request_id, self.num_chunks = request.request_id, request.spec.num_chunks
        self._request, self._lock, self._queue = request, lock, queue

    def progress(self) -> RequestProgress:
        with self._lock:
            r = self._request
            queued = None if r.admitted_time is None else r.admitted_time - r.arrival_time
            return RequestProgress(r.request_id, r.status, r.progress, queued, r.error)


class AsyncHeliosEngine(EngineFront):
    def __init__(self, *args, **kwargs):
        """The same options as HeliosEngine; starts the background step thread."""
        super().__init__(*args, **kwargs)
        self._wake = threading.Event()
        # request id -> (its number of chunks, the loop of its consumer, its chunk queue)
        self._streams: dict[str, tuple[int, asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopped = False
        self.dead: str | None = None
        """Why the engine stopped for good (EngineDeadError), once it has."""
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
        pacing: Pacing | None = None,
    ) -> RequestHandle:
        """Submit; raises QueueFullError / ValueError at once. Read its chunks with ``chunks``."""
        if self.dead:
            raise EngineDeadError(self.dead)
        request_id = request_id or uuid.uuid4().hex
        queue: asyncio.Queue = asyncio.Queue()
        request = self.core.add_request(request_id, spec, priority, realtime_fps, timeout_s, pacing)
        self._streams[request_id] = (request.spec.num_chunks, asyncio.get_running_loop(), queue)
        self._wake.set()
        return RequestHandle(request, self.core.lock, queue)

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
        handle = self.add_request(spec, request_id, priority, realtime_fps, timeout_s)
        try:
            async for chunk in self.chunks(handle):
                yield chunk
        finally:
            if not handle.progress().status.is_finished:
                self.abort(handle.request_id)

    async def chunks(self, handle: RequestHandle) -> AsyncIterator[VideoChunkOutput]:
        """The request's chunks as they are decoded; at its end, raises if it did not complete."""
        while True:
            item = await handle._queue.get()
            if item is _FINISHED:
                raise_for_status(handle.progress())
                return
            yield item

    async def switch_prompt(self, request_id: str, prompt: str, transition_chunks: int = 0) -> int:
        """The request follows ``prompt`` from its next chunk not begun, which is returned. The
        prompt is encoded on a worker thread first, so no engine step waits for it. KeyError if
        the request is not running, ValueError if every chunk has begun."""
        await asyncio.to_thread(self.core.executor.prepare_prompt, prompt)
        from_chunk = self.core.switch_prompt(request_id, prompt, transition_chunks)
        self._wake.set()
        return from_chunk

    def abort(self, request_id: str) -> bool:
        """Cancel a request; its slot is free for the next step. False if unknown or already done."""
        if self.core.abort_request(request_id) is None:
            return False
        self._deliver(request_id, _FINISHED, final=True)
        self._wake.set()
        return True

    def queue_depth(self) -> tuple[int, int]:
        """(waiting, running) requests."""
        with self.core.lock:
            return len(self.core.scheduler.waiting), len(self.core.scheduler.running)

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=30)
        self.core.executor.close()

    # -- the step loop (engine thread) ---------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopped:
            if not self.core.has_unfinished():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                step = self.core.step()
            except EngineDeadError as exc:  # a rank of the group died: nothing can run any more
                self.dead = str(exc)
                self._fail_everything(self.dead)
                return
            except Exception:  # noqa: BLE001 - a bug in the engine itself: fail everything, keep serving
                logger.exception("engine step failed; failing all running requests")
                self._fail_everything()
                continue
            if step.idle_s is not None:  # every request is paced: sleep until one may go on
                self._wake.wait(timeout=min(step.idle_s, 0.5))
                self._wake.clear()
            for chunk in step.chunks:
                target = self._streams.get(chunk.request_id)
                if target is not None:
                    item = VideoChunkOutput(chunk.request_id, chunk.chunk_index, target[0], chunk.frames,
                                            chunk.resume_state, chunk.cut_frames)
                    self._deliver(chunk.request_id, item)
            for request in step.finished:
                self._deliver(request.request_id, _FINISHED, final=True)

    def _fail_everything(self, reason: str = "internal engine error") -> None:
        with self.core.lock:
            scheduler = self.core.scheduler
            requests = [*scheduler.waiting, *scheduler.running.values()]
            for request in requests:
                scheduler.abort_request(request.request_id, RequestStatus.FINISHED_FAILED)
                request.error = reason
        for request in requests:
            self._deliver(request.request_id, _FINISHED, final=True)

    def _deliver(self, request_id: str, item, final: bool = False) -> None:
        target = self._streams.pop(request_id, None) if final else self._streams.get(request_id)
        if target is not None:
            _, loop, queue = target
            loop.call_soon_threadsafe(queue.put_nowait, item)
