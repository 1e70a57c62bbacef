"""Video jobs: HTTP requests in, engine requests out, chunks to disk and to live listeners.

Each job runs as one asyncio task that consumes its engine stream. Every chunk is encoded to
an fMP4 segment, written under the data directory, then the request's resume snapshot is
saved, then the job row is updated, then listeners (SSE, WebSocket, HLS) are told: a crash at
any point leaves a consistent job that resumes from its last completed chunk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time

import numpy as np

from ...errors import RequestCancelledError, RequestFailedError
from ...jobs.storage import JobFiles, new_job_id
from ...jobs.store import ACTIVE_STATUSES, JobRecord, JobStore
from ...model_executor.step_io import RequestSpec, chunk_frame_counts
from ...request import RequestStatus
from ...sampling_params import VideoSamplingParams
from ...streaming.fmp4 import ChunkEncoder, remux_to_mp4
from .errors import ApiError
from .inputs import decode_image, decode_video
from .metrics import ServerMetrics
from .protocol import VideoCreateRequest, VideoError, VideoObject

logger = logging.getLogger(__name__)
DEFAULT_FPS = 24
FRAGMENTS_PER_CHUNK = 64  # room in the fMP4 sequence numbering, so chunk k's numbers never depend on earlier ones


class VideoService:
    def __init__(self, engine, files: JobFiles, store: JobStore, model_name: str, metrics: ServerMetrics,
                 retention_s: float, instance: str | None = None):
        self.engine = engine
        self.instance = instance
        """This engine replica's id, recorded as the owner of its jobs (None for a single server)."""
        self.files = files
        self.store = store
        self.model_name = model_name
        self.metrics = metrics
        self.retention_s = retention_s
        self._live: dict[str, object] = {}  # job id -> engine Request, while the engine has it
        self._tasks: dict[str, asyncio.Task] = {}
        self._listeners: dict[str, set[asyncio.Queue]] = {}

    # -- creating ------------------------------------------------------------------------------
    async def create(self, request: VideoCreateRequest, uploads: dict[str, bytes], job_id: str | None = None
                     ) -> JobRecord:
        """Validate, submit to the engine, record and start the job. Raises ApiError (4xx).

        ``job_id`` is given by the Ray ingress, which may send a create again after a replica
        died mid-request: a job that already exists is returned, not made twice."""
        if request.model is not None and request.model != self.model_name:
            raise ApiError(404, "model_not_found", f"this server serves {self.model_name!r}, not {request.model!r}",
                           "model")
        if job_id is not None and (existing := self.store.get(job_id)) is not None:
            return existing
        job_id = job_id or new_job_id()
        stored = request.model_dump(exclude_none=True, exclude={"input_reference", "video_reference", "extra_params"})
        # Without a seed each job gets its own, recorded with the job: reported back, and a
        # resumed job continues with the same one.
        stored.setdefault("seed", secrets.randbelow(2**31))
        # Decoding uploads can take a while: off the event loop, so other clients are not held up.
        spec = await asyncio.to_thread(self._prepare, job_id, stored, uploads)
        record = self._new_record(job_id, request, stored, spec)
        try:
            self._submit(record, spec)  # 429 when the queue is full: nothing is recorded then
        except ApiError:
            self.files.remove(job_id)
            raise
        self.store.insert(record)
        return record

    def _prepare(self, job_id: str, stored: dict, uploads: dict[str, bytes]) -> RequestSpec:
        try:
            for name, data in uploads.items():  # kept with the job, so a resumed job finds them
                self.files.input(job_id, name).write_bytes(data)
            return self._spec(job_id, stored)
        except ValueError as exc:
            self.files.remove(job_id)
            raise ApiError(422, "invalid_value", str(exc)) from exc

    def _spec(self, job_id: str, fields: dict) -> RequestSpec:
        """The engine spec of a job, from its stored fields and input files (also on resume)."""
        fps = fields.get("fps", DEFAULT_FPS)
        num_frames = fields.get("num_frames")
        if "seconds" in fields:
            num_frames = max(1, round(fields["seconds"] * fps))
        width, height = (int(v) for v in fields["size"].split("x")) if "size" in fields else (None, None)
        sampling = {k: v for k, v in fields.items() if k in VideoSamplingParams.__dataclass_fields__}
        steps = sampling.pop("pyramid_num_inference_steps_list", None)
        params = VideoSamplingParams(**{**sampling, "num_frames": num_frames, "width": width, "height": height,
                                        "fps": fps, "seed": fields.get("seed", 0)},
                                     pyramid_num_inference_steps_list=tuple(steps) if steps else None)
        image, video = self.files.input(job_id, "image"), self.files.input(job_id, "video")
        if image.exists():
            params = params.with_updates(image=decode_image(image.read_bytes()))
        if video.exists():
            frames = decode_video(video)
            if len(frames) < 33:
                raise ValueError(f"video_reference needs at least 33 frames (one chunk), got {len(frames)}")
            params = params.with_updates(video=frames)
        return dataclasses.replace(self.engine.resolve(fields["prompt"], params), resumable=True)

    def _new_record(self, job_id: str, request: VideoCreateRequest, stored: dict, spec: RequestSpec) -> JobRecord:
        return JobRecord(
            id=job_id, model=self.model_name, prompt=request.prompt, status="queued", created_at=int(time.time()),
            request=stored, width=spec.width, height=spec.height, num_frames=spec.output_frames,
            fps=stored.get("fps", DEFAULT_FPS), total_chunks=spec.num_chunks, owner=self.instance,
        )

    def _submit(self, record: JobRecord, spec: RequestSpec) -> None:
        from ...errors import QueueFullError

        realtime_fps = record.fps if record.request.get("realtime") else None
        try:
            live, queue = self.engine.add_request(spec, record.id, record.request.get("priority", 0), realtime_fps)
        except QueueFullError as exc:
            raise ApiError(429, "queue_full", str(exc), headers={"Retry-After": str(max(1, round(exc.retry_after_s)))})
        except ValueError as exc:
            raise ApiError(422, "invalid_value", str(exc)) from exc
        self._live[record.id] = live
        self._tasks[record.id] = asyncio.create_task(self._run(record, live, queue, spec.start_chunk))

    # -- running ------------------------------------------------------------------------------------
    async def _run(self, record: JobRecord, live, queue, start_chunk: int) -> None:
        job_id, encoder = record.id, ChunkEncoder(record.fps)
        first_frame = sum(chunk_frame_counts(record.num_frames)[:start_chunk])
        submitted = last_chunk_time = time.monotonic()
        timings = dict(record.timings)
        try:
            async for chunk in self.engine.chunks(live, queue):
                now = time.monotonic()
                if chunk.chunk_index == start_chunk and start_chunk == 0:
                    timings["time_to_first_chunk_s"] = now - submitted
                    self.metrics.ttfc_seconds.observe(now - submitted)
                else:
                    self.metrics.chunk_seconds.observe(now - last_chunk_time)
                self.metrics.realtime_factor.observe(len(chunk.frames) / max(now - last_chunk_time, 1e-6) / record.fps)
                last_chunk_time = now
                await asyncio.to_thread(self._persist_chunk, job_id, encoder, chunk, first_frame)
                first_frame += len(chunk.frames)
                self.metrics.frames.inc(len(chunk.frames))
                self.store.update(job_id, status="in_progress", chunks_completed=chunk.chunk_index + 1,
                                  progress=self._progress(live), timings=timings)
                self._publish(job_id, {"type": "chunk", "chunk_index": chunk.chunk_index,
                                       "num_frames": len(chunk.frames), "total_chunks": record.total_chunks})
            timings["inference_time_s"] = time.monotonic() - submitted + timings.get("inference_time_s", 0.0)
            if live.admitted_time is not None:
                timings.setdefault("queue_time_s", live.admitted_time - live.arrival_time)
            await asyncio.to_thread(self._finalize, job_id)
            now = int(time.time())
            self.store.update(job_id, status="completed", progress=100, completed_at=now,
                              expires_at=now + int(self.retention_s), timings=timings)
            self.metrics.completed.inc()
            self._publish(job_id, {"type": "completed"})
        except RequestCancelledError as exc:
            self.metrics.cancelled.inc()
            if live.status is RequestStatus.FINISHED_TIMEOUT:
                self._fail(job_id, "timeout", str(exc))
        except RequestFailedError as exc:
            self.metrics.failed.inc()
            self._fail(job_id, "generation_failed", str(live.error or exc))
        except Exception as exc:  # noqa: BLE001 - a job's failure must not take the server down
            logger.exception("job %s failed", job_id)
            self.metrics.failed.inc()
            self._fail(job_id, "internal_error", f"{type(exc).__name__} while writing the video")
        finally:
            self._live.pop(job_id, None)
            self._tasks.pop(job_id, None)

    def _persist_chunk(self, job_id: str, encoder: ChunkEncoder, chunk, first_frame: int) -> None:
        """Segment first, snapshot second: a snapshot never runs ahead of the segments on disk."""
        from ...model_executor.resume import save_snapshot

        encoded = encoder.encode(chunk.frames, first_frame, chunk.chunk_index * FRAGMENTS_PER_CHUNK + 1)
        if chunk.chunk_index == 0:
            self.files.init_segment(job_id).write_bytes(encoded.init)
            self._write_thumbnail(job_id, chunk.frames[0])
        segment = self.files.segment(job_id, chunk.chunk_index)
        segment.with_suffix(".partial").write_bytes(encoded.media)
        segment.with_suffix(".partial").replace(segment)
        if chunk.resume_state is not None:
            save_snapshot(chunk.resume_state, self.files.snapshot(job_id))

    def _write_thumbnail(self, job_id: str, frame: np.ndarray) -> None:
        from PIL import Image

        Image.fromarray(frame).save(self.files.thumbnail(job_id), format="WEBP", quality=80)

    def _finalize(self, job_id: str) -> None:
        count = self.files.segments_present(job_id)
        parts = [self.files.init_segment(job_id).read_bytes()]
        parts += [self.files.segment(job_id, k).read_bytes() for k in range(count)]
        partial = self.files.video(job_id).with_suffix(".partial.mp4")
        remux_to_mp4(b"".join(parts), partial)
        partial.replace(self.files.video(job_id))
        self.files.snapshot(job_id).unlink(missing_ok=True)

    def _fail(self, job_id: str, code: str, message: str) -> None:
        if self.store.get(job_id) is None:
            return  # deleted meanwhile
        now = int(time.time())
        self.store.update(job_id, status="failed", error_code=code, error_message=message, completed_at=now,
                          expires_at=now + int(self.retention_s))
        self._publish(job_id, {"type": "failed", "error": {"code": code, "message": message}})

    # -- reading ------------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id) if job_id.startswith("video_") else None
        if record is None:
            raise ApiError(404, "not_found", f"no video with id {job_id!r}", "video_id")
        return record

    @staticmethod
    def _progress(live) -> int:
        return min(99, int(100 * live.progress))

    def view(self, record: JobRecord) -> VideoObject:
        """The job object; while the engine runs the job, status and progress are live."""
        status, progress = record.status, record.progress
        live = self._live.get(record.id)
        if live is not None and status in ACTIVE_STATUSES:
            status = "in_progress" if live.status is RequestStatus.RUNNING else status
            progress = max(progress, self._progress(live))
        error = VideoError(code=record.error_code, message=record.error_message) if record.error_code else None
        timings = record.timings
        return VideoObject(
            id=record.id, model=record.model, status=status, progress=progress, created_at=record.created_at,
            completed_at=record.completed_at, expires_at=record.expires_at,
            seconds=f"{record.num_frames / record.fps:g}", size=f"{record.width}x{record.height}",
            prompt=record.prompt, error=error, num_frames=record.num_frames, fps=record.fps,
            seed=record.request.get("seed"),
            chunks_completed=record.chunks_completed, total_chunks=record.total_chunks,
            queue_time_s=timings.get("queue_time_s"), time_to_first_chunk_s=timings.get("time_to_first_chunk_s"),
            inference_time_s=timings.get("inference_time_s"),
        )

    def live_progress(self, job_id: str) -> int | None:
        live = self._live.get(job_id)
        return self._progress(live) if live is not None else None

    # -- events -------------------------------------------------------------------------------------
    def subscribe(self, job_id: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self._listeners.setdefault(job_id, set()).add(queue)
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue) -> None:
        listeners = self._listeners.get(job_id)
        if listeners is not None:
            listeners.discard(queue)
            if not listeners:
                del self._listeners[job_id]

    def _publish(self, job_id: str, event: dict) -> None:
        for queue in self._listeners.get(job_id, ()):
            queue.put_nowait(event)

    # -- deleting, resuming, expiring ------------------------------------------------------------
    async def delete(self, job_id: str) -> None:
        self.get(job_id)
        if job_id in self._live:
            self.engine.abort(job_id)  # the engine frees the slot at its next step
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.wait([task], timeout=10)
        self.store.delete(job_id)
        self.files.remove(job_id)
        self._publish(job_id, {"type": "failed", "error": {"code": "cancelled", "message": "the video was deleted"}})

    def resume_interrupted(self) -> list[str]:
        """Restart the jobs a crash or restart interrupted, each from its last completed chunk."""
        return [record.id for record in self.store.with_status(ACTIVE_STATUSES) if self._resume(record)]

    def adopt(self, job_ids: list[str], previous_owner: str) -> list[str]:
        """Take over unfinished jobs of a replica that died, each from its last completed chunk."""
        adopted = []
        for job_id in job_ids:
            record = self.store.get(job_id)
            if record is None or record.status not in ACTIVE_STATUSES:
                continue
            if self.store.claim(job_id, previous_owner, self.instance) and self._resume(record):
                adopted.append(job_id)
        return adopted

    def _resume(self, record: JobRecord) -> bool:
        from ...model_executor.resume import load_snapshot

        snapshot_path = self.files.snapshot(record.id)
        try:
            done = load_snapshot(snapshot_path).chunks_done if snapshot_path.exists() else 0
            spec = self._spec(record.id, record.request)
            if done:
                spec = dataclasses.replace(spec, resume_path=str(snapshot_path), start_chunk=done)
            self._submit(record, spec)
            logger.info("resuming %s after %d of %d chunks", record.id, done, record.total_chunks)
            return True
        except Exception as exc:  # noqa: BLE001 - one bad job must not stop the others resuming
            logger.warning("cannot resume %s: %s", record.id, exc)
            self._fail(record.id, "resume_failed", f"could not resume after a restart: {exc}")
            return False

    def delete_expired(self) -> int:
        expired = self.store.expired(int(time.time()))
        for job_id in expired:
            if job_id not in self._live:
                self.store.delete(job_id)
                self.files.remove(job_id)
        return len(expired)
