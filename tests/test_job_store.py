"""The job store and the expiry of old videos, without a server."""

from __future__ import annotations

import asyncio
import time

from helios_serve.entrypoints.openai.metrics import ServerMetrics
from helios_serve.jobs.manager import JobManager
from helios_serve.jobs.storage import JobFiles, is_job_id, new_job_id
from helios_serve.jobs.store import JobRecord, JobStore


def record(job_id: str, **changes) -> JobRecord:
    values = dict(id=job_id, model="helios-tiny", prompt="p", status="completed", created_at=0, request={"prompt": "p"},
                  width=64, height=64, num_frames=33, fps=24, total_chunks=1)
    return JobRecord(**{**values, **changes})


def test_expired_videos_are_deleted_with_their_files(tmp_path):
    files = JobFiles(tmp_path)
    store = JobStore(files.database)
    service = JobManager(None, files, store, "helios-tiny", retention_s=60, metrics=ServerMetrics("helios-tiny"))
    old, fresh = new_job_id(), new_job_id()
    now = int(time.time())
    for job_id, expires in ((old, now - 1), (fresh, now + 3600)):
        store.insert(record(job_id, expires_at=expires))
        files.job_dir(job_id, create=True)
        files.video(job_id).write_bytes(b"mp4")
    assert asyncio.run(service.delete_expired()) == 1
    assert store.get(old) is None and not files.job_dir(old).exists()
    assert store.get(fresh) is not None and files.video(fresh).exists()


def test_store_round_trip_and_pages(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    ids = [new_job_id() for _ in range(5)]
    for job_id in ids:
        store.insert(record(job_id, status="queued", timings={"queue_time_s": 0.5}))
    store.update(ids[0], status="in_progress", chunks_completed=1)
    assert store.get(ids[0]).status == "in_progress" and store.get(ids[0]).timings == {"queue_time_s": 0.5}
    page, more = store.page(None, 2, "desc")
    assert [r.id for r in page] == ids[::-1][:2] and more
    page, more = store.page(ids[1], 10, "asc")
    assert [r.id for r in page] == ids[2:] and not more
    assert [r.id for r in store.with_status(("in_progress",))] == [ids[0]]
    assert is_job_id(ids[0]) and not is_job_id("../" + ids[0]) and not is_job_id(ids[0] + "/x")


def test_the_chunk_sink_writes_segments_then_snapshots_and_after_the_last_the_mp4(tmp_path):
    import numpy as np

    from helios_serve.jobs.sink import ChunkSink
    from helios_serve.outputs import VideoChunkOutput
    from helios_serve.video_io import read_video

    class Snapshot:
        def __init__(self, done: int):
            self.done = done

        def save(self, path):
            # A snapshot never runs ahead of the segments on disk.
            assert files.segments_present(job_id) == self.done
            path.write_text(str(self.done))

    files, job_id = JobFiles(tmp_path), new_job_id()
    files.job_dir(job_id, create=True)
    sink = ChunkSink(files, job_id, fps=24, num_frames=66)
    rng = np.random.default_rng(0)
    counts = [33, 32]  # the last chunk trimmed to a 4n+1 video
    for index, count in enumerate(counts):
        frames = rng.integers(0, 255, (count, 32, 48, 3), dtype=np.uint8)
        sink.write(VideoChunkOutput("r", index, 2, frames, Snapshot(index + 1)))
        if index == 0:
            assert files.snapshot(job_id).read_text() == "1" and not files.video(job_id).exists()
    assert files.thumbnail(job_id).exists()
    assert read_video(files.video(job_id)).shape == (sum(counts), 32, 48, 3)
    assert files.snapshot(job_id).read_text() == "2"  # kept: an extension continues from it
