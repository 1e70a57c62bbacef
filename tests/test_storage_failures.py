"""A full disk, I/O errors and a damaged job store: a job fails with a clear error and its
listeners hear it, a create that cannot be stored leaves nothing behind, DELETE frees space
even when the store cannot be written, and a damaged row or file never leaves a server that
looks healthy but cannot serve."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time

import httpx
import pytest

from helios_serve.engine.async_engine import AsyncHeliosEngine
from helios_serve.entrypoints.openai.metrics import ServerMetrics
from helios_serve.errors import StorageError, StoreUnavailableError
from helios_serve.jobs.manager import JobManager
from helios_serve.jobs.status import ACTIVE_STATUSES, JobEnded, JobStatus
from helios_serve.jobs.storage import JobFiles, new_job_id
from helios_serve.jobs.store import DAMAGED_RECORD, JobRecord, JobStore
from helios_serve.sampling_params import VideoSamplingParams
from live_server import start_server

SMALL = dict(height=64, width=64, num_frames=66)


class FailingStore(JobStore):
    """A store whose writes fail as SQLite's do on a full disk, once ``full`` is set."""

    full = False

    def _refuse(self):
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")

    def insert(self, record):
        self._refuse()
        super().insert(record)

    def update(self, job_id, **changes):
        self._refuse()
        super().update(job_id, **changes)

    def delete(self, job_id):
        self._refuse()
        super().delete(job_id)


class BrokenSegments(JobFiles):
    """Segments go to a directory that does not exist: every segment write is an OSError."""

    def segment(self, job_id, index):
        return self.root / "missing" / f"seg_{index:05d}.m4s"


@pytest.fixture(scope="module")
def engine():
    engine = AsyncHeliosEngine(model="helios-tiny")
    yield engine
    engine.shutdown()


def manager(engine, tmp_path, files_class=JobFiles, **options) -> tuple[JobManager, FailingStore]:
    files = files_class(tmp_path)
    store = FailingStore(files.database)
    return JobManager(engine, files, store, "helios-tiny", 3600, ServerMetrics("helios-tiny"), **options), store


def test_a_failed_video_write_fails_the_job_and_tells_its_listeners(engine, tmp_path):
    async def run():
        jobs, _ = manager(engine, tmp_path, BrokenSegments)
        record = await jobs.create("a fox", VideoSamplingParams(**SMALL))
        events = jobs.subscribe(record.id)
        event = await asyncio.wait_for(events.get(), timeout=120)
        return jobs, record, event

    jobs, record, event = asyncio.run(run())
    assert isinstance(event, JobEnded) and event.status is JobStatus.FAILED and event.error_code == "storage_error"
    failed = asyncio.run(jobs.get(record.id))
    assert failed.status is JobStatus.FAILED and "could not be written" in failed.error_message
    assert str(tmp_path) not in failed.error_message  # no server paths in what clients read
    assert engine.queue_depth() == (0, 0)  # the engine stopped working on it


def test_when_the_store_is_full_the_job_still_ends_and_reads_failed(engine, tmp_path):
    async def run():
        jobs, store = manager(engine, tmp_path)
        record = await jobs.create("a fox", VideoSamplingParams(**SMALL))
        store.full = True  # the first chunk's row update fails
        events = jobs.subscribe(record.id)
        event = await asyncio.wait_for(events.get(), timeout=120)
        return jobs, store, record, event

    jobs, store, record, event = asyncio.run(run())
    assert event.status is JobStatus.FAILED and event.error_code == "storage_error"
    assert store.get(record.id).status in ACTIVE_STATUSES  # the row could not be written ...
    assert asyncio.run(jobs.get(record.id)).status is JobStatus.FAILED  # ... but every read sees the failure
    assert jobs.storage_problem().startswith("the job store refused a write")
    store.full = False
    asyncio.run(jobs.delete_expired())  # the periodic clean-up records the failure once the store takes writes
    assert store.get(record.id).status is JobStatus.FAILED and jobs.storage_problem() is None


def test_a_create_that_cannot_be_stored_leaves_nothing_behind(engine, tmp_path):
    async def run():
        jobs, store = manager(engine, tmp_path)
        store.full = True
        with pytest.raises(StorageError, match="cannot be written"):
            await jobs.create("a fox", VideoSamplingParams(**SMALL))
        return jobs, store

    jobs, store = asyncio.run(run())
    assert engine.queue_depth() == (0, 0)  # nothing was submitted
    assert list((tmp_path / "videos").iterdir()) == []
    store.full = False
    assert store.page(None, 10, "asc") == ([], False)


def test_delete_frees_the_files_even_when_the_store_is_full(engine, tmp_path):
    async def run():
        jobs, store = manager(engine, tmp_path)
        record = await jobs.create("a fox", VideoSamplingParams(**SMALL))
        await jobs.wait_final(record.id)
        store.full = True
        await jobs.delete(record.id)
        return jobs, store, record

    jobs, store, record = asyncio.run(run())
    assert not jobs.files.job_dir(record.id).exists()
    with pytest.raises(LookupError):
        asyncio.run(jobs.get(record.id))  # reads as deleted although its row is still there
    assert store.get(record.id) is not None
    store.full = False
    asyncio.run(jobs.delete_expired())  # the periodic clean-up deletes the row once the store takes writes
    assert store.get(record.id) is None


class SlowStore(JobStore):
    """A store whose every call takes STORE_DELAY_S, as one behind a slow disk or a distant database."""

    def _execute(self, query, params=()):
        time.sleep(STORE_DELAY_S)
        return super()._execute(query, params)

    def _fetchone(self, query, params=()):
        time.sleep(STORE_DELAY_S)
        return super()._fetchone(query, params)

    def _fetchall(self, query, params=()):
        time.sleep(STORE_DELAY_S)
        return super()._fetchall(query, params)


STORE_DELAY_S = 0.25


def test_job_store_calls_never_block_the_event_loop(engine, tmp_path):
    """Creates, chunk updates, reads, pages and the clean-up each wait for a slow store, but on the
    manager's store thread: the event loop keeps serving others meanwhile."""

    async def run() -> float:
        files = JobFiles(tmp_path)
        jobs = JobManager(engine, files, SlowStore(files.database), "helios-tiny", 3600, ServerMetrics("helios-tiny"))
        longest_gap, running = 0.0, True

        async def ticker():
            nonlocal longest_gap
            last = time.monotonic()
            while running:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                longest_gap, last = max(longest_gap, now - last), now

        ticking = asyncio.create_task(ticker())
        record = await jobs.create("a fox", VideoSamplingParams(**SMALL))  # insert, then two chunk updates
        assert (await jobs.wait_final(record.id)).status is JobStatus.COMPLETED
        assert [r.id for r in (await jobs.page(None, 10, "asc"))[0]] == [record.id]
        assert await jobs.delete_expired() == 0
        running = False
        await ticking
        return longest_gap

    longest_gap = asyncio.run(run())
    assert longest_gap < STORE_DELAY_S / 2, f"the event loop stood still for {longest_gap:.3f} s"


def test_low_disk_space_refuses_new_videos_with_507_and_health_says_degraded(tmp_path):
    server = start_server(tmp_path / "data", "--min-free-disk-mb", str(2**40))  # more than any disk has
    try:
        response = httpx.post(f"{server.api}/videos", json={"prompt": "a fox", "size": "64x64"})
        assert response.status_code == 507, response.text
        assert response.json()["error"]["code"] == "insufficient_storage"
        assert "MiB free" in response.json()["error"]["message"]
        assert httpx.get(f"{server.api}/videos").json()["data"] == []  # nothing was recorded
        health = httpx.get(f"{server.url}/health")
        assert health.status_code == 200 and health.json()["status"] == "degraded"
    finally:
        server.stop()


# -- a damaged job store ----------------------------------------------------------------------------
def record(job_id: str, status: str) -> JobRecord:
    return JobRecord(id=job_id, model="helios-tiny", prompt="p", status=JobStatus(status), created_at=0,
                     request={"prompt": "p", "num_frames": 33, "height": 64, "width": 64}, width=64, height=64,
                     num_frames=33, fps=24, total_chunks=1)


@pytest.mark.parametrize("column, value", [("request_json", "{not json"), ("status", "exploded"),
                                           ("width", "wide"), ("timings_json", "[1, 2]")])
def test_a_damaged_row_is_set_aside_and_the_others_are_read(tmp_path, column, value):
    store = JobStore(tmp_path / "jobs.sqlite3")
    good, damaged = new_job_id(), new_job_id()
    store.insert(record(good, "in_progress"))
    store.insert(record(damaged, "in_progress"))
    store._connection.execute(f"UPDATE videos SET {column} = ? WHERE id = ?", (value, damaged))
    quarantined = store.get(damaged)
    assert quarantined.status is JobStatus.FAILED and quarantined.error_code == DAMAGED_RECORD
    assert [r.id for r in store.with_status(ACTIVE_STATUSES)] == [good]  # never resumed
    assert [r.id for r in store.page(None, 10, "asc")[0]] == [good, damaged]


def test_a_server_with_a_damaged_row_is_ready_and_reports_it(tmp_path):
    data = tmp_path / "data"
    store = JobStore(JobFiles(data).database)
    damaged = new_job_id()
    store.insert(record(damaged, "in_progress"))
    store._connection.execute("UPDATE videos SET request_json = '{not json' WHERE id = ?", (damaged,))
    store.close()
    server = start_server(data)
    try:
        assert httpx.get(f"{server.url}/ready").status_code == 200
        video = httpx.get(f"{server.api}/videos/{damaged}").json()
        assert video["status"] == "failed" and video["error"]["code"] == DAMAGED_RECORD
        created = httpx.post(f"{server.api}/videos", json={"prompt": "a fox", "size": "64x64", "seconds": "1"})
        assert created.status_code == 200  # everything else runs
    finally:
        server.stop()


def test_a_damaged_database_file_stops_the_start_naming_the_file(tmp_path):
    data = tmp_path / "data"
    (data / "videos").mkdir(parents=True)
    (data / "jobs.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailableError, match="jobs.sqlite3"):
        JobStore(data / "jobs.sqlite3")
    started = subprocess.run([sys.executable, "-m", "helios_serve.cli", "serve", "--data-dir", str(data),
                              "--port", "1"], capture_output=True, text=True, timeout=120)
    assert started.returncode == 2
    assert "jobs.sqlite3 cannot be opened" in started.stderr and "Traceback" not in started.stderr


def test_health_is_503_when_the_service_cannot_serve(tmp_path):
    """A model that failed to load: /health fails (a probe restarts the server), and says why."""
    from fastapi.testclient import TestClient

    from helios_serve.config import HeliosConfig, ServerConfig
    from helios_serve.entrypoints.openai.api_server import build_app

    app = build_app(HeliosConfig(server=ServerConfig(data_dir=str(tmp_path))))
    client = TestClient(app, base_url="http://127.0.0.1")  # no lifespan: nothing loads
    assert client.get("/health").json() == {"status": "ok"}
    app.state.server.load_error = "loading helios-tiny failed: out of memory"
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["detail"] == "loading helios-tiny failed: out of memory"


def test_a_model_that_fails_to_load_stops_serve_with_the_cause(tmp_path):
    """A checkpoint folder whose scheduler config is missing: `serve` exits 1 with one line that
    says so, instead of staying up unready."""
    from live_server import free_port

    checkpoint = tmp_path / "broken-checkpoint"
    checkpoint.mkdir()
    (checkpoint / "model_index.json").write_text('{"_class_name": "HeliosPyramidPipeline"}')
    started = subprocess.run([sys.executable, "-m", "helios_serve.cli", "serve", str(checkpoint), "--port",
                              str(free_port()), "--data-dir", str(tmp_path / "data"), "--log-level", "error"],
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 1, started.stderr[-2000:]
    last = started.stderr.strip().splitlines()[-1]
    assert last.startswith("helios-serve: error: loading") and "scheduler_config.json is missing" in last
