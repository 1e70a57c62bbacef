"""The SQLite job store: one row per video job, the source of truth across restarts."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .status import JobStatus

SCHEMA = """
CREATE TABLE IF NOT EXISTS videos (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    request_json TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    num_frames INTEGER NOT NULL,
    fps INTEGER NOT NULL,
    total_chunks INTEGER NOT NULL,
    chunks_completed INTEGER NOT NULL DEFAULT 0,
    progress INTEGER NOT NULL DEFAULT 0,
    completed_at INTEGER,
    expires_at INTEGER,
    error_code TEXT,
    error_message TEXT,
    timings_json TEXT NOT NULL DEFAULT '{}',
    owner TEXT
)
"""


@dataclass
class JobRecord:
    id: str
    model: str
    prompt: str
    status: JobStatus
    created_at: int
    request: dict
    """The job's settings: ``VideoSamplingParams.to_fields()`` plus prompt, priority and
    realtime; enough to run (or resume) the job again."""
    width: int
    height: int
    num_frames: int
    fps: int
    total_chunks: int
    chunks_completed: int = 0
    progress: int = 0
    completed_at: int | None = None
    expires_at: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    timings: dict = field(default_factory=dict)
    """queue_time_s, time_to_first_chunk_s, inference_time_s."""
    owner: str | None = None
    """The engine replica running the job (Ray deployments); None for a single server."""

    def to_row(self) -> dict:
        row = asdict(self)
        row["request_json"] = json.dumps(row.pop("request"))
        row["timings_json"] = json.dumps(row.pop("timings"))
        return row

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        values = dict(row)
        values.pop("seq", None)
        values["request"] = json.loads(values.pop("request_json"))
        values["timings"] = json.loads(values.pop("timings_json"))
        values["status"] = JobStatus(values["status"])
        return cls(**values)


class JobStore:
    """Thread-safe (one connection, one lock); every write is committed at once."""

    def __init__(self, path: str | Path):
        # Several processes (engine replicas) may share the file: wait for each other's writes.
        self._connection = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._connection.row_factory = sqlite3.Row
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute(SCHEMA)
        columns = {row["name"] for row in self._connection.execute("PRAGMA table_info(videos)")}
        if "owner" not in columns:  # a store written before replicas existed
            self._connection.execute("ALTER TABLE videos ADD COLUMN owner TEXT")
        self._lock = threading.Lock()

    def insert(self, record: JobRecord) -> None:
        row = record.to_row()
        columns = ", ".join(row)
        with self._lock:
            self._connection.execute(f"INSERT INTO videos ({columns}) VALUES ({', '.join('?' * len(row))})",
                                     tuple(row.values()))

    def update(self, job_id: str, **changes) -> None:
        if "timings" in changes:
            changes["timings_json"] = json.dumps(changes.pop("timings"))
        allowed = {f.name for f in fields(JobRecord)} | {"timings_json"}
        unknown = set(changes) - allowed
        if unknown:
            raise KeyError(f"unknown job fields {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in changes)
        with self._lock:
            self._connection.execute(f"UPDATE videos SET {assignments} WHERE id = ?", (*changes.values(), job_id))

    def claim(self, job_id: str, previous_owner: str | None, owner: str) -> bool:
        """Take a job over from ``previous_owner``; False if someone else changed its owner first."""
        with self._lock:
            cursor = self._connection.execute("UPDATE videos SET owner = ? WHERE id = ? AND owner IS ?",
                                              (owner, job_id, previous_owner))
        return cursor.rowcount == 1

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._connection.execute("SELECT * FROM videos WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.from_row(row) if row else None

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._connection.execute("DELETE FROM videos WHERE id = ?", (job_id,))

    def page(self, after: str | None, limit: int, order: str) -> tuple[list[JobRecord], bool]:
        """Newest first for 'desc'; ``after`` is the id of the last job of the previous page."""
        descending = order == "desc"
        query, params = "SELECT * FROM videos", []
        if after is not None:
            with self._lock:
                anchor = self._connection.execute("SELECT seq FROM videos WHERE id = ?", (after,)).fetchone()
            if anchor is None:
                return [], False
            query += " WHERE seq < ?" if descending else " WHERE seq > ?"
            params.append(anchor["seq"])
        query += f" ORDER BY seq {'DESC' if descending else 'ASC'} LIMIT ?"
        params.append(limit + 1)
        with self._lock:
            rows = self._connection.execute(query, params).fetchall()
        return [JobRecord.from_row(r) for r in rows[:limit]], len(rows) > limit

    def with_status(self, statuses: tuple[str, ...]) -> list[JobRecord]:
        marks = ", ".join("?" * len(statuses))
        with self._lock:
            rows = self._connection.execute(f"SELECT * FROM videos WHERE status IN ({marks}) ORDER BY seq", statuses)
            return [JobRecord.from_row(r) for r in rows.fetchall()]

    def expired(self, now: int) -> list[str]:
        with self._lock:
            rows = self._connection.execute("SELECT id FROM videos WHERE expires_at IS NOT NULL AND expires_at <= ?",
                                            (now,)).fetchall()
        return [r["id"] for r in rows]

    def close(self) -> None:
        self._connection.close()
