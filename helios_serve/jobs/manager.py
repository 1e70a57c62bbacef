"""Video jobs: durable requests of the engine, apart from any web framework and from torch.

A job is a row in the store (its settings, status and progress), files under the data
directory (inputs, segments, snapshot, final MP4) and, while the engine has it, an engine
handle. One asyncio task per running job consumes the engine's chunks: each is written by the
job's ChunkSink (segment, then snapshot; after the last chunk, the final MP4), then the row is
updated, then listeners are told, so a crash at any point leaves a consistent job that resumes
from its last completed chunk.

Every store call runs on the manager's one store thread (``_stored``), never on the event loop:
a slow disk or a database server across the network then holds up no other client, and one
thread keeps the calls in the order they were made.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from ..errors import (
    InvalidRequestError,
    JobConflictError,
    JobNotFoundError,
    RequestCancelledError,
    RequestFailedError,
    StorageError,
)
from ..logging_config import log_request_done
from ..model_executor.step_io import RequestSpec
from ..request import Pacing, RequestStatus
from ..sampling_params import MAX_FRAMES, MAX_PROMPT_CHARS, MAX_SCHEDULE_ENTRIES, VideoSamplingParams
from ..video_io import read_image_bytes, read_video_tail
from .extend import extend_job, finish_stored
from .sink import LIVE_KEPT_SEGMENTS, ChunkSink
from .status import ACTIVE_STATUSES, CANCELLED, ChunkReady, JobEnded, JobEvent, JobStatus, PromptChanged
from .storage import JobFiles, new_job_id
from .store import JobRecord, JobStore

logger = logging.getLogger(__name__)

_UNREAD = object()
"""Stands for an input file not decoded yet (JobManager._spec)."""


class JobManager:
    def __init__(self, engine, files: JobFiles, store: JobStore, model_name: str, retention_s: float, metrics,
                 owner: str | None = None, min_free_bytes: int = 0, max_stream_seconds: float = 3600.0,
                 max_kept_stream_bytes: int = 2048 * 2**20):
        """``metrics`` receives each job's timings (entrypoints/openai/metrics.py: ServerMetrics);
        new jobs are refused (StorageError) while the data directory has less than ``min_free_bytes`` free.
        A live stream (created with ``live``) is ``max_stream_seconds`` of video at most, and one that
        keeps its segments ends when they pass ``max_kept_stream_bytes``."""
        self.max_stream_seconds, self.max_kept_stream_bytes = max_stream_seconds, max_kept_stream_bytes
        self.engine, self.files, self.store = engine, files, store
        self.model_name, self.retention_s = model_name, retention_s
        self.metrics = metrics
        self.owner = owner
        """This engine replica's id, recorded as the owner of its jobs (None for a single server)."""
        self.min_free_bytes = min_free_bytes
        self._handles: dict[str, object] = {}  # job id -> engine RequestHandle, while the engine has it
        self._tasks: dict[str, asyncio.Task] = {}
        self._listeners: dict[str, set[asyncio.Queue]] = {}
        # What a failing store could not record: final states (read over the row) and deletions.
        self._unsaved: dict[str, dict] = {}
        self._deleted: set[str] = set()
        self.store_error: str | None = None
        """The last write the store refused, until one succeeds again (reported by /health)."""
        self._store_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-store")

    async def _stored(self, call, *args, **kwargs):
        """``call(*args, **kwargs)``, a method of the store, run on the store thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._store_thread, functools.partial(call, *args, **kwargs))

    # -- creating --------------------------------------------------------------------------------
    async def create(self, prompt: str, params: VideoSamplingParams, uploads: dict[str, bytes] | None = None, *,
                     priority: int = 0, realtime: bool = False, job_id: str | None = None, live: bool = False,
                     keep: bool = False, pacing: dict | None = None) -> JobRecord:
        """Validate, submit to the engine, record and start a job.

        ``live``: a real-time stream without a length (``params.num_frames`` unset) that runs until
        deleted or the server's ``max_stream_seconds``: only its last segments are kept, and no
        final MP4 is made unless ``keep``. ``pacing``: the request's pacing fields
        (pace_to_media_time, pacing_lead_seconds, pacing_max_lag_seconds), stored with the job.

        Raises InvalidRequestError or QueueFullError (nothing is recorded then). ``job_id`` is
        given by the Ray ingress, which may send a create again after a replica died
        mid-request: a job that already exists is returned, not made twice."""
        if job_id is not None and (existing := await self.find(job_id)) is not None:
            return existing
        self._check_free_space()
        job_id = job_id or new_job_id()
        settings = {"prompt": prompt, "priority": priority, "realtime": realtime, **params.to_fields(), **(pacing or {})}
        if live:  # the length is the server's limit; the stored num_frames keeps it across restarts
            fps = params.fps or self.engine.variant.default_fps
            settings.update(live=True, num_frames=max(1, round(fps * self.max_stream_seconds)))
            if keep:
                settings["keep"] = True
        # Decoding uploads can take a while: off the event loop, so other clients are not held up.
        spec = await asyncio.to_thread(self._prepare, job_id, settings, uploads or {})
        record = JobRecord(
            id=job_id, model=self.model_name, prompt=prompt, status=JobStatus.QUEUED, created_at=int(time.time()),
            request=settings, width=spec.width, height=spec.height, num_frames=spec.output_frames,
            fps=params.fps or self.engine.variant.default_fps, total_chunks=spec.num_chunks, owner=self.owner,
        )
        await self._start(record, spec)
        return record

    async def _start(self, record: JobRecord, spec: RequestSpec) -> None:
        """Record a new job, then hand it to the engine. The row first: a job the engine has always
        has a row (a restart resumes it), and a create that fails at any point leaves neither a row
        nor files nor engine work behind."""
        try:
            await self._write(self.store.insert, record)
            self._submit(record, spec)
        except Exception:
            await self._forget(record.id)
            raise

    def _check_free_space(self) -> None:
        if (low := self._low_disk()) is not None:
            raise StorageError(f"the server is low on disk space ({low}); delete videos or retry later")

    def _low_disk(self) -> str | None:
        free = self.files.free_bytes()
        if free < self.min_free_bytes:
            return f"{free // 2**20} MiB free, below the {self.min_free_bytes // 2**20} MiB reserve"
        return None

    def _prepare(self, job_id: str, settings: dict, uploads: dict[str, bytes]) -> RequestSpec:
        try:
            for name, data in uploads.items():
                self.files.input(job_id, name).write_bytes(data)
            return self._spec(job_id, settings)
        except ValueError as exc:
            self.files.remove(job_id)
            raise InvalidRequestError(str(exc)) from exc
        except OSError as exc:
            self.files.remove(job_id)
            raise StorageError(f"the upload could not be stored: {exc.strerror or type(exc).__name__}") from None

    async def _forget(self, job_id: str) -> None:
        """Undo a create: no row (if one was written), no files."""
        self.files.remove(job_id)
        try:
            await self._stored(self.store.delete, job_id)
        except self.store.driver_errors():
            logger.warning("could not remove the row of the failed create %s", job_id)

    async def _write(self, write, *args, **changes) -> None:
        """A store write; StorageError when the store refuses it (a full disk, an I/O error, a
        database server gone)."""
        try:
            await self._stored(write, *args, **changes)
        except self.store.driver_errors() as exc:
            self.store_error = f"the job store refused a write: {exc}"
            raise StorageError(f"the job store cannot be written ({exc}); retry later") from None
        self.store_error = None

    def _spec(self, job_id: str, settings: dict) -> RequestSpec:
        """The engine spec of a job, from its stored settings and input files (also on resume)."""
        # A live stream's length is the server's limit, which may pass the longest video a request
        # may ask for (MAX_FRAMES): resolved at that, and given its own length after.
        live_frames = settings["num_frames"] if settings.get("live") else None
        if live_frames is not None:
            settings = {**settings, "num_frames": min(live_frames, MAX_FRAMES)}
        params = VideoSamplingParams.from_fields(settings)
        image, video = self.files.input(job_id, "image"), self.files.input(job_id, "video")
        # Resolve before decoding, with stand-ins for the inputs (resolve only asks whether one is
        # given): a model that takes no inputs refuses them undecoded, and they are read at the size
        # the model will resize them to, keeping only the video frames it uses.
        given = {"image": _UNREAD if image.exists() else None, "video": _UNREAD if video.exists() else None}
        resolved = self.engine.resolve(settings["prompt"], params.with_updates(**given))
        size = (resolved.width, resolved.height)
        if image.exists():
            params = params.with_updates(image=read_image_bytes(image.read_bytes(), "input_reference", size=size))
        if video.exists():
            tail = read_video_tail(video, "video_reference", size=size)
            if len(tail.frames) < 33:
                raise ValueError(f"video_reference needs at least 33 frames (one chunk), got {len(tail.frames)}")
            params = params.with_updates(video=tail.frames, video_skipped_frames=tail.skipped_frames)
        # seed_from_chunk: set for an extension with a seed of its own (jobs/extend.py).
        spec = dataclasses.replace(self.engine.resolve(settings["prompt"], params), resumable=True,
                                   seed_from_chunk=int(settings.get("seed_from_chunk", 0)))
        return dataclasses.replace(spec, num_frames=live_frames) if live_frames is not None else spec

    def _submit(self, record: JobRecord, spec: RequestSpec) -> None:
        """Raises QueueFullError, or InvalidRequestError for a request the engine cannot take."""
        realtime_fps = record.fps if record.request.get("realtime") else None
        paced = {}
        if realtime_fps is not None and record.request.get("pace_to_media_time"):
            paced["pacing"] = Pacing(record.request.get("pacing_lead_seconds", Pacing.lead_s),
                                     record.request.get("pacing_max_lag_seconds", Pacing.max_lag_s))
        try:
            handle = self.engine.add_request(spec, record.id, record.request.get("priority", 0), realtime_fps, **paced)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from exc
        self._handles[record.id] = handle
        self._tasks[record.id] = asyncio.create_task(self._run(record, handle, spec.start_chunk))

    # -- running -----------------------------------------------------------------------------------
    async def _run(self, record: JobRecord, handle, start_chunk: int) -> None:
        job_id, metrics = record.id, self.metrics
        live, keep = bool(record.request.get("live")), bool(record.request.get("keep"))
        end_reason = "max_stream_seconds" if live else None
        sink = ChunkSink(self.files, job_id, record.fps, record.num_frames,
                         window=LIVE_KEPT_SEGMENTS if live and not keep else None, build_video=keep or not live)
        submitted = last_chunk_time = time.monotonic()
        timings = dict(record.timings)
        outcome = None  # how the job ended, for the metrics: None when the server stops first
        try:
            async for chunk in self.engine.chunks(handle):
                now = time.monotonic()
                if chunk.chunk_index == start_chunk == 0:
                    timings["time_to_first_chunk_s"] = now - submitted
                    metrics.time_to_first_chunk.observe(now - submitted)
                else:
                    metrics.chunk_seconds.observe(now - last_chunk_time)
                metrics.realtime_factor.observe(len(chunk.frames) / max(now - last_chunk_time, 1e-6) / record.fps)
                last_chunk_time = now
                await asyncio.to_thread(sink.write, chunk)
                metrics.frames_generated.inc(len(chunk.frames))
                await self._write(self.store.update, job_id, status=JobStatus.IN_PROGRESS,
                            chunks_completed=chunk.chunk_index + 1, progress=self._percent(handle.progress()),
                            timings=timings)
                self._publish(job_id, ChunkReady(chunk.chunk_index, len(chunk.frames), record.total_chunks))
                if live and keep and sink.bytes_kept > self.max_kept_stream_bytes:  # ends, with what it made
                    end_reason = "max_kept_stream_mb"
                    self.engine.abort(job_id)
                    await asyncio.to_thread(sink.finish)
                    break
            timings["inference_time_s"] = time.monotonic() - submitted + timings.get("inference_time_s", 0.0)
            if (queued := handle.progress().queue_time_s) is not None:
                timings.setdefault("queue_time_s", queued)
            now = int(time.time())
            if end_reason:  # read again: the settings may have changed meanwhile (a new prompt)
                current = await self.find(job_id)
                ended = {"request": {**(current or record).request, "end_reason": end_reason}}
            else:
                ended = {}
            await self._write(self.store.update, job_id, status=JobStatus.COMPLETED, progress=100, completed_at=now,
                        expires_at=now + int(self.retention_s), timings=timings, **ended)
            outcome = "completed"
            self._publish(job_id, JobEnded(JobStatus.COMPLETED))
        except RequestCancelledError as exc:
            timed_out = handle.progress().status is RequestStatus.FINISHED_TIMEOUT
            outcome = "timeout" if timed_out else "cancelled"
            if timed_out:
                await self._fail(job_id, "timeout", str(exc))
        except RequestFailedError as exc:
            outcome = "failed"
            await self._fail(job_id, "generation_failed", str(handle.progress().error or exc))
        except OSError as exc:  # a full disk or an I/O error while writing the video or its row
            logger.error("job %s failed: cannot write its video: %s", job_id, exc)
            self.engine.abort(job_id)
            outcome = "failed"
            reason = str(exc) if isinstance(exc, StorageError) else exc.strerror or type(exc).__name__
            await self._fail(job_id, "storage_error", f"the video could not be written: {reason}")
        except Exception as exc:  # noqa: BLE001 - a job's failure must not take the server down
            logger.exception("job %s failed", job_id)
            self.engine.abort(job_id)
            outcome = "failed"
            await self._fail(job_id, "internal_error", f"{type(exc).__name__} while writing the video")
        finally:
            if outcome is not None:
                metrics.on_job_finished(outcome, time.monotonic() - submitted, handle.progress().queue_time_s)
            self._handles.pop(job_id, None)
            self._tasks.pop(job_id, None)
            if (ended := await self._ended(job_id, handle)) is not None:
                log_request_done(ended, time.monotonic() - submitted)

    async def _ended(self, job_id: str, handle) -> JobRecord | None:
        """The record of a job whose run ended, for the request log line; None when the server
        stopped first (the job resumes at the next start) or the store cannot be read."""
        try:
            record = await self.get(job_id)
        except Exception:  # noqa: BLE001 - a log line must not fail a job
            return None
        if record.status in ACTIVE_STATUSES and not handle.progress().status.is_finished:
            return None
        return record

    async def _fail(self, job_id: str, code: str, message: str) -> None:
        """Record a job's failure and tell its listeners; if the store refuses the write, the
        failure is kept in memory (reads see it) so no listener waits forever."""
        if job_id in self._deleted or await self.find(job_id) is None:
            return  # deleted meanwhile
        now = int(time.time())
        changes = dict(status=JobStatus.FAILED, error_code=code, error_message=message, completed_at=now,
                       expires_at=now + int(self.retention_s))
        try:
            await self._write(self.store.update, job_id, **changes)
        except StorageError:
            self._unsaved[job_id] = changes
        self._publish(job_id, JobEnded(JobStatus.FAILED, code, message))

    # -- changing the prompt of a running job -------------------------------------------------------
    async def switch_prompt(self, job_id: str, prompt, transition_chunks=0) -> tuple[int, JobRecord]:
        """The job follows ``prompt`` from its next chunk not begun (blended in over
        ``transition_chunks``): (that chunk, the job's record with the new schedule). The
        schedule is stored with the job's settings, so a resumed job keeps it.

        InvalidRequestError for a bad prompt or transition, JobNotFoundError, JobConflictError
        when the job is finished or every chunk of it has begun."""
        if not isinstance(prompt, str) or not prompt or len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidRequestError(f"prompt must be a non-empty string of at most {MAX_PROMPT_CHARS} characters",
                                      "prompt")
        if type(transition_chunks) is not int or not 0 <= transition_chunks <= 1000:
            raise InvalidRequestError(f"transition_chunks must be an integer from 0 to 1000, got {transition_chunks!r}",
                                      "transition_chunks")
        record = await self.get(job_id)
        if record.status not in ACTIVE_STATUSES or job_id not in self._handles:
            raise JobConflictError(f"video {job_id} is {record.status}; its prompt can no longer change",
                                   "video_not_running")
        if len(record.request.get("prompt_schedule") or ()) >= MAX_SCHEDULE_ENTRIES:  # its row stays bounded
            raise JobConflictError(f"video {job_id} has changed its prompt {MAX_SCHEDULE_ENTRIES - 1} times, the most "
                                   "a video records; start a new one", "too_many_prompt_changes")
        try:
            from_chunk = await self.engine.switch_prompt(job_id, prompt, transition_chunks)
        except KeyError:
            raise JobConflictError(f"video {job_id} is no longer running; its prompt can no longer change",
                                   "video_not_running") from None
        except ValueError as exc:
            raise JobConflictError(f"video {job_id}: {exc}", "no_chunk_left") from None
        # Read again: chunks completed while the prompt was encoded are recorded in the row meanwhile.
        record = await self.get(job_id)
        settings = dict(record.request)
        schedule = settings.get("prompt_schedule") or [{"from_chunk": 0, "prompt": settings["prompt"],
                                                        "transition_chunks": 0}]
        if from_chunk == 0:  # nothing begun yet: the whole video follows the new prompt
            settings["prompt"] = prompt
            schedule = [{"from_chunk": 0, "prompt": prompt, "transition_chunks": 0}]
            changes = {"prompt": prompt}
        else:  # as RequestSpec.with_prompt_from: switches planned from then on are dropped
            schedule = [entry for entry in schedule if entry["from_chunk"] < from_chunk]
            schedule.append({"from_chunk": from_chunk, "prompt": prompt, "transition_chunks": transition_chunks})
            changes = {}
        settings["prompt_schedule"] = schedule
        await self._write(self.store.update, job_id, request=settings, **changes)
        self._publish(job_id, PromptChanged(from_chunk, prompt, transition_chunks))
        return from_chunk, dataclasses.replace(record, request=settings, **changes)

    # -- extending ---------------------------------------------------------------------------------
    async def extend(self, video_id: str, *, num_frames: int | None = None, seconds: float | None = None,
                     prompt: str | None = None, seed: int | None = None, transition_chunks: int = 0) -> JobRecord:
        """A new job whose video is the completed ``video_id`` continued by ``num_frames`` frames (or
        ``seconds``), jobs/extend.py: exactly the one longer video with the prompt switching at the seam."""
        return await extend_job(self, video_id, num_frames, seconds, prompt, seed, transition_chunks)

    # -- reading -----------------------------------------------------------------------------------
    async def get(self, job_id: str) -> JobRecord:
        known = job_id.startswith("video_") and job_id not in self._deleted
        record = await self._stored(self.store.get, job_id) if known else None
        if record is None:
            raise JobNotFoundError(f"no video with id {job_id!r}")
        unsaved = self._unsaved.get(job_id)
        return dataclasses.replace(record, **unsaved) if unsaved else record

    async def page(self, after: str | None, limit: int, order: str) -> tuple[list[JobRecord], bool]:
        """Up to ``limit`` jobs after the id ``after`` in creation ``order``, and whether more follow."""
        return await self._stored(self.store.page, after, limit, order)

    async def find(self, job_id: str) -> JobRecord | None:
        """The job's stored record, or None when there is none (deleted)."""
        return await self._stored(self.store.get, job_id)

    @staticmethod
    def _percent(progress) -> int:
        return min(99, int(100 * progress.fraction_done))

    def current(self, record: JobRecord) -> tuple[JobStatus, int]:
        """(status, percent done): while the engine runs the job, read live from its handle."""
        handle = self._handles.get(record.id)
        if handle is None or record.status not in ACTIVE_STATUSES:
            return record.status, record.progress
        progress = handle.progress()
        status = JobStatus.IN_PROGRESS if progress.status is RequestStatus.RUNNING else record.status
        return status, max(record.progress, self._percent(progress))

    def live_progress(self, job_id: str) -> int | None:
        """Percent done while the engine has the job, else None."""
        handle = self._handles.get(job_id)
        return self._percent(handle.progress()) if handle is not None else None

    # -- events ------------------------------------------------------------------------------------
    def subscribe(self, job_id: str) -> asyncio.Queue[JobEvent]:
        queue: asyncio.Queue = asyncio.Queue()
        self._listeners.setdefault(job_id, set()).add(queue)
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue) -> None:
        listeners = self._listeners.get(job_id)
        if listeners is not None:
            listeners.discard(queue)
            if not listeners:
                del self._listeners[job_id]

    def _publish(self, job_id: str, event: JobEvent) -> None:
        for queue in self._listeners.get(job_id, ()):
            queue.put_nowait(event)

    async def wait_final(self, job_id: str) -> JobRecord:
        """The job's record once it is completed or failed (or JobNotFoundError if deleted)."""
        events = self.subscribe(job_id)
        try:
            while not (record := await self.get(job_id)).status.is_final:
                try:
                    await asyncio.wait_for(events.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    continue
            return record
        finally:
            self.unsubscribe(job_id, events)

    # -- deleting, resuming, expiring --------------------------------------------------------------
    async def delete(self, job_id: str) -> None:
        await self.get(job_id)
        if job_id in self._handles:
            self.engine.abort(job_id)  # the engine frees the slot at its next step
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.wait([task], timeout=10)
        self.files.remove(job_id)  # the space first: a full disk is when deleting matters most
        await self._delete_row(job_id)
        self._publish(job_id, JobEnded(JobStatus.FAILED, CANCELLED, "the video was deleted"))

    async def _delete_row(self, job_id: str) -> None:
        """Delete a row; if the store refuses, the job reads as deleted and the row goes later."""
        self._deleted.add(job_id)
        self._unsaved.pop(job_id, None)
        try:
            await self._write(self.store.delete, job_id)
        except StorageError as exc:
            logger.warning("%s: its files are deleted, its row will be when the store can be written (%s)", job_id, exc)
            return
        self._deleted.discard(job_id)

    def storage_problem(self) -> str | None:
        """Why new videos cannot be stored now (low disk space, a store refusing writes), or None."""
        return self._low_disk() or self.store_error

    async def resume_interrupted(self) -> list[str]:
        """Restart the jobs a crash or restart interrupted, each from its last completed chunk."""
        interrupted = await self._stored(self.store.with_status, ACTIVE_STATUSES)
        return [record.id for record in interrupted if await self._resume(record)]

    async def adopt(self, job_ids: list[str], previous_owner: str) -> list[str]:
        """Take over unfinished jobs of a replica that died, each from its last completed chunk."""
        adopted = []
        for job_id in job_ids:
            record = await self.find(job_id)
            if record is None or record.status not in ACTIVE_STATUSES:
                continue
            if await self._stored(self.store.claim, job_id, previous_owner, self.owner) and await self._resume(record):
                adopted.append(job_id)
        return adopted

    def _resumed_spec(self, record: JobRecord) -> RequestSpec:
        """The spec of an interrupted job, from its last snapshot (its inputs decoded again)."""
        spec = self._spec(record.id, record.request)
        snapshot = self.files.snapshot(record.id)
        return self.engine.resumed(spec, str(snapshot)) if snapshot.exists() else spec

    async def _resume(self, record: JobRecord) -> bool:
        try:
            spec = await asyncio.to_thread(self._resumed_spec, record)
            if spec.start_chunk >= spec.num_chunks:  # stopped after its last chunk was stored, before its row said so
                await finish_stored(self, record)
                return False
            self._submit(record, spec)
            logger.info("resuming %s after %d of %d chunks", record.id, spec.start_chunk, record.total_chunks)
            return True
        except Exception as exc:  # noqa: BLE001 - one bad job must not stop the others resuming
            logger.warning("cannot resume %s: %s", record.id, exc)
            await self._fail(record.id, "resume_failed", f"could not resume after a restart: {exc}")
            return False

    async def delete_expired(self) -> int:
        """Delete expired videos; record what a failing store refused before (final states, deletions)."""
        for job_id, changes in list(self._unsaved.items()):
            try:
                await self._write(self.store.update, job_id, **changes)
            except StorageError:
                break
            del self._unsaved[job_id]
        for job_id in list(self._deleted):
            await self._delete_row(job_id)
        expired = await self._stored(self.store.expired, int(time.time()))
        for job_id in expired:
            if job_id not in self._handles:
                self.files.remove(job_id)
                await self._delete_row(job_id)
        return len(expired)
