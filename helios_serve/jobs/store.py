"""The SQLite job store: one row per video job, the source of truth across restarts."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import StoreUnavailableError
from .status import JobStatus

logger = logging.getLogger(__name__)

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
        """The record of a row; ValueError (or TypeError) if any column holds what no writer writes."""
        values = dict(row)
        values.pop("seq", None)
        values["request"] = _json_object(values.pop("request_json"))
        values["timings"] = _json_object(values.pop("timings_json"))
        values["status"] = JobStatus(values["status"])
        for item in fields(cls):
            value = values[item.name]
            if item.type in INTEGER_FIELDS and not (value is None and "None" in item.type):
                if type(value) is not int:
                    raise ValueError(f"{item.name} is {value!r}, not an integer")
            elif item.type in TEXT_FIELDS and not (value is None and "None" in item.type):
                if not isinstance(value, str):
                    raise ValueError(f"{item.name} is {value!r}, not text")
        return cls(**values)

    @classmethod
    def quarantined(cls, row: sqlite3.Row, reason: str) -> JobRecord:
        """What is reported for a damaged row: a failed job that is never resumed."""
        job_id = row["id"] if isinstance(row["id"], str) else f"damaged row {row['seq']}"
        return cls(id=job_id, model="", prompt="", status=JobStatus.FAILED, created_at=0, request={}, width=0, height=0,
                   num_frames=0, fps=1, total_chunks=0, error_code=DAMAGED_RECORD,
                   error_message=f"this video's record is damaged ({reason}); it was set aside")


DAMAGED_RECORD = "damaged_record"
WAL_CHECKPOINT_PAGES = 64
WAL_SIZE_LIMIT_BYTES = 1 << 20
INTEGER_FIELDS = {"int", "int | None"}
TEXT_FIELDS = {"str", "str | None"}


def _json_object(text) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


class JobStore:
    """Thread-safe (one connection, one lock); every write is committed at once."""

    def __init__(self, path: str | Path):
        """Raises StoreUnavailableError, naming the file, when it cannot be opened as a job store."""
        try:
            self._connection = self._open(path)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"the job store {path} cannot be opened: {exc}") from None
        self._lock = threading.Lock()

    @staticmethod
    def _open(path: str | Path) -> sqlite3.Connection:
        # Several processes (engine replicas) may share the file: wait for each other's writes.
        connection = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA journal_mode=WAL")
        # Every chunk of every running job commits a row update: checkpoint the log often and cap
        # its file, so the data directory stays flat under endless streams (SQLite's default lets
        # the log grow to about 4 MiB first).
        connection.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        connection.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        connection.execute(SCHEMA)
        columns = {row["name"] for row in connection.execute("PRAGMA table_info(videos)")}
        if "owner" not in columns:  # a store written before replicas existed
            connection.execute("ALTER TABLE videos ADD COLUMN owner TEXT")
        return connection

    @staticmethod
    def _record(row: sqlite3.Row) -> JobRecord:
        """A row's record, or a quarantined one (logged) if the row is damaged: one bad row
        must not stop the others being listed or resumed."""
        try:
            return JobRecord.from_row(row)
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("job store row %s is damaged and set aside: %s", row["seq"], exc)
            return JobRecord.quarantined(row, str(exc))

    def insert(self, record: JobRecord) -> None:
        row = record.to_row()
        columns = ", ".join(row)
        with self._lock:
            self._connection.execute(f"INSERT INTO videos ({columns}) VALUES ({', '.join('?' * len(row))})",
                                     tuple(row.values()))

    def update(self, job_id: str, **changes) -> None:
        if "timings" in changes:
            changes["timings_json"] = json.dumps(changes.pop("timings"))
        if "request" in changes:
            changes["request_json"] = json.dumps(changes.pop("request"))
        allowed = {f.name for f in fields(JobRecord)} | {"timings_json", "request_json"}
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
        return self._record(row) if row else None

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
        return [self._record(r) for r in rows[:limit]], len(rows) > limit

    def with_status(self, statuses: tuple[str, ...]) -> list[JobRecord]:
        marks = ", ".join("?" * len(statuses))
        with self._lock:
            rows = self._connection.execute(f"SELECT * FROM videos WHERE status IN ({marks}) ORDER BY seq", statuses)
            records = [self._record(r) for r in rows.fetchall()]
        return [r for r in records if r.status in statuses]  # a damaged row is reported failed

    def expired(self, now: int) -> list[str]:
        with self._lock:
            rows = self._connection.execute("SELECT id FROM videos WHERE expires_at IS NOT NULL AND expires_at <= ?",
                                            (now,)).fetchall()
        return [r["id"] for r in rows]

    def close(self) -> None:
        self._connection.close()
