"""Extending a finished video: a new job that continues it from its stored history.

A completed job keeps what its continuation needs (jobs/sink.py): its fMP4 segments, the resume
snapshot after its last chunk (history latents, first-frame anchor, random generator state) and,
when its last chunk was trimmed to make a 4n+1 video, that chunk untrimmed (``seg_full_last.m4s``:
a longer video has all 33 of its frames). An extension of a video of n chunks is a new job whose
directory starts with those files (the init segment, segments 0 to n - 2, the untrimmed last
segment as segment n - 1, the snapshot), whose settings are the original's with the longer
length and the prompt schedule switching at chunk n, and which the engine resumes at chunk n.

So every chunk it makes is the chunk ONE job with those settings makes, every segment is that
job's segment (the chunk encoder is deterministic) and so is its final MP4: extending equals
having asked for the longer video in the first place, and an extension can be extended again.
A new seed re-seeds the generator at chunk n (``RequestSpec.seed_from_chunk``); without one (or
with the same) the original's random stream goes on, as in the one longer video.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path

from ..errors import InvalidRequestError, JobConflictError, JobExpiredError, StorageError
from ..model_executor.step_io import FRAMES_PER_CHUNK, RequestSpec
from ..sampling_params import MAX_FRAMES
from .sink import ChunkSink
from .status import JobStatus
from .storage import JobFiles, new_job_id
from .store import JobRecord

logger = logging.getLogger(__name__)
NOT_EXTENDABLE = "not_extendable"


async def extend_job(jobs, video_id: str, num_frames: int | None = None, seconds: float | None = None,
                     prompt: str | None = None, seed: int | None = None, transition_chunks: int = 0) -> JobRecord:
    """Create, record and start the extension of ``video_id`` (``jobs``: the JobManager) by
    ``num_frames`` frames or ``seconds`` at its fps. JobNotFoundError, JobExpiredError,
    JobConflictError (not completed, history gone), InvalidRequestError, QueueFullError, StorageError."""
    original = await jobs.get(video_id)
    trimmed = check_extendable(jobs.files, original)
    if (num_frames is None) == (seconds is None):
        raise InvalidRequestError("give seconds or num_frames (how much to add), not both", "num_frames")
    added = num_frames if num_frames is not None else max(1, round(seconds * original.fps))
    settings = extension_settings(original, added, prompt, seed, transition_chunks)
    jobs._check_free_space()
    job_id = new_job_id()
    spec = await asyncio.to_thread(_prepare, jobs, original, job_id, settings, trimmed)
    record = JobRecord(
        id=job_id, model=jobs.model_name, prompt=settings["prompt"], status=JobStatus.QUEUED,
        created_at=int(time.time()), request=settings, width=spec.width, height=spec.height,
        num_frames=spec.output_frames, fps=original.fps, total_chunks=spec.num_chunks,
        chunks_completed=spec.start_chunk, owner=jobs.owner,
    )
    await jobs._start(record, spec)
    logger.info("%s extends %s from chunk %d to %d chunks", job_id, video_id, spec.start_chunk, spec.num_chunks)
    return record


def check_extendable(files: JobFiles, original: JobRecord) -> bool:
    """Raise unless ``original`` can be extended; returns whether its last chunk was trimmed."""
    video_id = original.id
    if original.expires_at is not None and original.expires_at <= time.time():
        raise JobExpiredError(f"video {video_id} has expired and is being deleted; it can no longer be extended")
    if original.status is not JobStatus.COMPLETED:
        raise JobConflictError(f"video {video_id} is {original.status}; only a completed video can be extended",
                               NOT_EXTENDABLE)
    if original.request.get("live"):
        raise JobConflictError(f"video {video_id} is a live stream; it cannot be extended", NOT_EXTENDABLE)
    trimmed = original.num_frames < FRAMES_PER_CHUNK * original.total_chunks
    if not all(path.exists() for path in history_files(files, original.id, original.total_chunks, trimmed)):
        raise history_gone(video_id)
    return trimmed


def history_gone(video_id: str) -> JobConflictError:
    return JobConflictError(
        f"video {video_id} cannot be extended: its stored history (segments and resume snapshot) is gone, e.g. it "
        "was made before extensions were kept; create a longer video with the same seed instead", NOT_EXTENDABLE)


def history_files(files: JobFiles, job_id: str, num_chunks: int, trimmed: bool) -> list[Path]:
    """What an extension starts from, in the order of ``copy_history``'s targets."""
    last = files.full_last_segment(job_id) if trimmed else files.segment(job_id, num_chunks - 1)
    return [files.init_segment(job_id), *(files.segment(job_id, k) for k in range(num_chunks - 1)), last,
            files.snapshot(job_id)]


def extension_settings(original: JobRecord, added_frames: int, prompt: str | None, seed: int | None,
                       transition_chunks: int) -> dict:
    """The stored settings of the one longer video: the original's, ``added_frames`` after its
    last chunk, ``prompt`` from there on (without one, the original's schedule goes on)."""
    settings = dict(original.request)
    chunks = original.total_chunks
    settings["num_frames"] = total = chunks * FRAMES_PER_CHUNK + added_frames
    if total > MAX_FRAMES:
        raise InvalidRequestError(f"the extended video would have {total} frames, more than the {MAX_FRAMES} a video "
                                  "may have", "num_frames")
    if prompt is not None:
        schedule = settings.get("prompt_schedule") or [
            {"from_chunk": 0, "prompt": settings["prompt"], "transition_chunks": 0}]
        settings["prompt_schedule"] = [*schedule, {"from_chunk": chunks, "prompt": prompt,
                                                   "transition_chunks": transition_chunks}]
    if seed is not None and seed != settings.get("seed"):
        settings.update(seed=seed, seed_from_chunk=chunks)
    settings["extended_from"] = original.id
    return settings


def _prepare(jobs, original: JobRecord, job_id: str, settings: dict, trimmed: bool) -> RequestSpec:
    """The new job's files (the original's history) and its spec, resumed at the original's end."""
    files = jobs.files
    try:
        copy_history(files, original, job_id, trimmed)
        spec = jobs.engine.resumed(jobs._spec(job_id, settings), str(files.snapshot(job_id)))
        if spec.start_chunk != original.total_chunks:
            raise history_gone(original.id)
        return spec
    except FileNotFoundError:  # deleted meanwhile
        files.remove(job_id)
        raise history_gone(original.id) from None
    except InvalidRequestError:
        files.remove(job_id)
        raise
    except ValueError as exc:
        files.remove(job_id)
        raise InvalidRequestError(str(exc)) from exc
    except OSError as exc:
        files.remove(job_id)
        raise StorageError(f"the video's history could not be copied: {exc.strerror or type(exc).__name__}") from None
    except BaseException:
        files.remove(job_id)
        raise


def copy_history(files: JobFiles, original: JobRecord, job_id: str, trimmed: bool) -> None:
    """The original's history as the new job's: segments and snapshot hard-linked where the disk
    allows (they are only ever replaced by renames, never written in place), the rest copied."""
    files.job_dir(job_id, create=True)
    chunks = original.total_chunks
    sources = history_files(files, original.id, chunks, trimmed)
    targets = [files.init_segment(job_id), *(files.segment(job_id, k) for k in range(chunks)), files.snapshot(job_id)]
    for source, target in zip(sources, targets, strict=True):
        try:
            os.link(source, target)
        except FileNotFoundError:
            raise
        except OSError:
            shutil.copyfile(source, target)
    copies = [(files.thumbnail(original.id), files.thumbnail(job_id))]
    copies += [(files.job_dir(original.id) / f"input_{name}", files.input(job_id, name)) for name in ("image", "video")]
    for source, target in copies:
        if source.exists():
            shutil.copyfile(source, target)


async def finish_stored(jobs, record: JobRecord) -> None:
    """A job stopped after its last chunk was stored (its snapshot says every chunk is done) but
    before its row said so: the final MP4 from its segments, and the row completed."""
    if not record.request.get("live") or record.request.get("keep"):  # a live stream has no MP4 unless kept
        await asyncio.to_thread(ChunkSink(jobs.files, record.id, record.fps, record.num_frames).finish)
    now = int(time.time())
    await jobs._write(jobs.store.update, record.id, status=JobStatus.COMPLETED, chunks_completed=record.total_chunks,
                progress=100, completed_at=now, expires_at=now + int(jobs.retention_s))
    logger.info("%s had stored its last chunk before the restart: completed", record.id)
