"""The job store's interface on SQLite and on a real PostgreSQL server, and its migrations."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from helios_serve.errors import StoreUnavailableError
from helios_serve.jobs.migrations import MIGRATIONS
from helios_serve.jobs.storage import new_job_id
from helios_serve.jobs.store import JobRecord, JobStore, PostgresJobStore, open_job_store


def record(job_id: str, **changes) -> JobRecord:
    values = dict(id=job_id, model="helios-tiny", prompt="p", status="queued", created_at=1_700_000_000,
                  request={"prompt": "p"}, width=64, height=64, num_frames=33, fps=24, total_chunks=1)
    return JobRecord(**{**values, **changes})


def test_the_store_interface(job_store_location):
    store = open_job_store(job_store_location)
    expected_kind = PostgresJobStore if str(job_store_location).startswith("postgresql") else JobStore
    assert type(store) is expected_kind
    ids = [new_job_id() for _ in range(5)]
    for job_id in ids:
        store.insert(record(job_id, timings={"queue_time_s": 0.5}))
    store.update(ids[0], status="in_progress", chunks_completed=1, timings={"queue_time_s": 0.25})
    first = store.get(ids[0])
    assert (first.status, first.chunks_completed, first.timings) == ("in_progress", 1, {"queue_time_s": 0.25})
    assert store.get("video_missing") is None
    page, more = store.page(None, 2, "desc")
    assert [r.id for r in page] == ids[::-1][:2] and more
    page, more = store.page(ids[1], 10, "asc")
    assert [r.id for r in page] == ids[2:] and not more
    assert store.page("video_missing", 10, "asc") == ([], False)
    assert [r.id for r in store.with_status(("in_progress",))] == [ids[0]]
    # claims: null-safe compare-and-set of the owner
    assert store.claim(ids[1], None, "replica-a") and not store.claim(ids[1], None, "replica-b")
    assert store.claim(ids[1], "replica-a", "replica-b") and store.get(ids[1]).owner == "replica-b"
    store.update(ids[2], expires_at=10)
    store.update(ids[3], expires_at=10**10)
    assert store.expired(100) == [ids[2]]
    store.delete(ids[2])
    assert store.get(ids[2]) is None
    with pytest.raises(KeyError, match="unknown job fields"):
        store.update(ids[0], colour="red")
    store.close()
    reopened = open_job_store(job_store_location)  # the migrations are not run twice
    assert reopened.get(ids[0]).chunks_completed == 1
    reopened.close()


def test_concurrent_claims_have_one_winner(job_store_location):
    """Replicas adopting the same dead replica's job: exactly one takes it."""
    job_id = new_job_id()
    setup = open_job_store(job_store_location)
    setup.insert(record(job_id, owner="replica-dead"))
    stores = [open_job_store(job_store_location) for _ in range(4)]
    wins, barrier = [], threading.Barrier(len(stores))

    def adopt(store, name):
        barrier.wait()
        if store.claim(job_id, "replica-dead", name):
            wins.append(name)

    threads = [threading.Thread(target=adopt, args=(store, f"replica-{i}")) for i, store in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1 and setup.get(job_id).owner == wins[0]
    for store in [setup, *stores]:
        store.close()


def test_a_sqlite_store_from_before_migrations_is_stamped_and_migrated(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    old = sqlite3.connect(path)  # the schema as it was first shipped (no owner, no version)
    old.execute("CREATE TABLE videos (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, "
                "model TEXT NOT NULL, prompt TEXT NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL, "
                "request_json TEXT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, "
                "num_frames INTEGER NOT NULL, fps INTEGER NOT NULL, total_chunks INTEGER NOT NULL, "
                "chunks_completed INTEGER NOT NULL DEFAULT 0, progress INTEGER NOT NULL DEFAULT 0, "
                "completed_at INTEGER, expires_at INTEGER, error_code TEXT, error_message TEXT, "
                "timings_json TEXT NOT NULL DEFAULT '{}')")
    old.execute("INSERT INTO videos (id, model, prompt, status, created_at, request_json, width, height, num_frames, "
                "fps, total_chunks) VALUES ('video_old', 'm', 'p', 'completed', 0, '{}', 64, 64, 33, 24, 1)")
    old.commit()
    old.close()
    store = JobStore(path)
    assert store.get("video_old").owner is None and store.claim("video_old", None, "replica-a")
    version = sqlite3.connect(path).execute("SELECT version FROM schema_version").fetchone()[0]
    assert version == len(MIGRATIONS)


def test_replicas_opening_a_new_postgres_store_at_once_migrate_it_once(postgres):
    url = postgres.create_database("jobs_concurrent_open")
    stores, errors, barrier = [], [], threading.Barrier(4)

    def open_store():
        barrier.wait()
        try:
            stores.append(open_job_store(url))
        except Exception as exc:  # noqa: BLE001 - collected and reported by the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(stores) == 4
    assert stores[0]._fetchone("SELECT version FROM schema_version")["version"] == len(MIGRATIONS)
    assert stores[0]._fetchone("SELECT count(*) AS n FROM schema_version")["n"] == 1
    for store in stores:
        store.close()


def test_an_unreachable_postgres_store_is_one_clear_error_without_the_password():
    with pytest.raises(StoreUnavailableError) as raised:
        open_job_store("postgresql://helios:s3cret@127.0.0.1:1/jobs")
    assert "cannot be opened" in str(raised.value) and "s3cret" not in str(raised.value)
    assert "postgresql://helios:***@127.0.0.1:1/jobs" in str(raised.value)
