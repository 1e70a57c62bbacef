"""The job store: one row per video job, the source of truth across restarts.

SQLite (a file in the data directory) is the embedded default; ``postgresql://...`` puts the
same store on PostgreSQL, so engine replicas on several machines share their jobs through a
database server rather than through a SQLite file on a shared filesystem (whose locks network
filesystems often do not honour). Both speak the same SQL; the schema is migrations.py's.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import StoreUnavailableError
from .migrations import MIGRATION_LOCK, legacy_sqlite_version, statements
from .status import JobStatus

logger = logging.getLogger(__name__)

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
    def from_row(cls, row) -> JobRecord:
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
    def quarantined(cls, row, reason: str) -> JobRecord:
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


def open_job_store(location: str | Path) -> JobStore:
    """The store at ``location``: a ``postgresql://`` URL, else a SQLite file's path."""
    if str(location).startswith(("postgresql://", "postgres://")):
        return PostgresJobStore(str(location))
    return JobStore(location)


class JobStore:
    """The SQLite store. Thread-safe (one connection, one lock); every write is committed at once."""

    dialect = "sqlite"
    same_as = "IS"
    """SQL's null-safe equality in this dialect."""

    def __init__(self, location: str | Path):
        """Raises StoreUnavailableError, naming the store, when it cannot be opened as a job store."""
        self._lock = threading.Lock()
        try:
            self._connection = self._open(location)
        except self.driver_errors() as exc:
            raise StoreUnavailableError(f"the job store {self.describe(location)} cannot be opened: {exc}") from None

    @staticmethod
    def driver_errors() -> tuple[type[Exception], ...]:
        return (sqlite3.Error,)

    @staticmethod
    def describe(location) -> str:
        return str(location)

    def _open(self, path) -> sqlite3.Connection:
        # Several processes (engine replicas) may share the file: wait for each other's writes.
        connection = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA journal_mode=WAL")
        # Every chunk of every running job commits a row update: checkpoint the log often and cap
        # its file, so the data directory stays flat under endless streams (SQLite's default lets
        # the log grow to about 4 MiB first).
        connection.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        connection.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        connection.execute("BEGIN IMMEDIATE")  # one process migrates at a time
        try:
            self._migrate(connection)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return connection

    def _migrate(self, connection) -> None:
        """Apply the migrations this store has not had (inside the caller's transaction)."""
        connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = connection.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            version = self._unversioned_schema(connection)
            connection.execute(self._sql("INSERT INTO schema_version (version) VALUES (?)"), (version,))
        else:
            version = row["version"]
        for version, sql in statements(self.dialect, version):
            connection.execute(sql)
            connection.execute(self._sql("UPDATE schema_version SET version = ?"), (version,))

    def _unversioned_schema(self, connection) -> int:
        """The migrations a store written before versioning has had."""
        return legacy_sqlite_version({row["name"] for row in connection.execute("PRAGMA table_info(videos)")})

    def _sql(self, query: str) -> str:
        """``query`` with ``?`` parameters, in this driver's parameter style."""
        return query

    def _execute(self, query: str, params=()):
        with self._lock:
            return self._connection.execute(self._sql(query), params)

    def _fetchone(self, query: str, params=()):
        with self._lock:
            return self._connection.execute(self._sql(query), params).fetchone()

    def _fetchall(self, query: str, params=()) -> list:
        with self._lock:
            return self._connection.execute(self._sql(query), params).fetchall()

    @staticmethod
    def _record(row) -> JobRecord:
        """A row's record, or a quarantined one (logged) if the row is damaged: one bad row
        must not stop the others being listed or resumed."""
        try:
            return JobRecord.from_row(row)
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("job store row %s is damaged and set aside: %s", row["seq"], exc)
            return JobRecord.quarantined(row, str(exc))

    def insert(self, record: JobRecord) -> None:
        row = record.to_row()
        self._execute(f"INSERT INTO videos ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
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
        self._execute(f"UPDATE videos SET {assignments} WHERE id = ?", (*changes.values(), job_id))

    def claim(self, job_id: str, previous_owner: str | None, owner: str) -> bool:
        """Take a job over from ``previous_owner``; False if someone else changed its owner first."""
        cursor = self._execute(f"UPDATE videos SET owner = ? WHERE id = ? AND owner {self.same_as} ?",
                               (owner, job_id, previous_owner))
        return cursor.rowcount == 1

    def get(self, job_id: str) -> JobRecord | None:
        row = self._fetchone("SELECT * FROM videos WHERE id = ?", (job_id,))
        return self._record(row) if row else None

    def delete(self, job_id: str) -> None:
        self._execute("DELETE FROM videos WHERE id = ?", (job_id,))

    def page(self, after: str | None, limit: int, order: str) -> tuple[list[JobRecord], bool]:
        """Newest first for 'desc'; ``after`` is the id of the last job of the previous page."""
        descending = order == "desc"
        query, params = "SELECT * FROM videos", []
        if after is not None:
            anchor = self._fetchone("SELECT seq FROM videos WHERE id = ?", (after,))
            if anchor is None:
                return [], False
            query += " WHERE seq < ?" if descending else " WHERE seq > ?"
            params.append(anchor["seq"])
        query += f" ORDER BY seq {'DESC' if descending else 'ASC'} LIMIT ?"
        params.append(limit + 1)
        rows = self._fetchall(query, params)
        return [self._record(r) for r in rows[:limit]], len(rows) > limit

    def with_status(self, statuses: tuple[str, ...]) -> list[JobRecord]:
        marks = ", ".join("?" * len(statuses))
        records = [self._record(r) for r in self._fetchall(
            f"SELECT * FROM videos WHERE status IN ({marks}) ORDER BY seq", tuple(statuses))]
        return [r for r in records if r.status in statuses]  # a damaged row is reported failed

    def expired(self, now: int) -> list[str]:
        rows = self._fetchall("SELECT id FROM videos WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
        return [r["id"] for r in rows]

    def close(self) -> None:
        self._connection.close()


class PostgresJobStore(JobStore):
    """The store on a PostgreSQL server (psycopg 3), for replicas on several machines. One
    connection in autocommit mode, like the SQLite store; a lost connection is reopened once."""

    dialect = "postgresql"
    same_as = "IS NOT DISTINCT FROM"

    @staticmethod
    def driver_errors() -> tuple[type[Exception], ...]:
        import psycopg

        return (psycopg.Error,)

    @staticmethod
    def describe(location) -> str:
        """The URL without its password (it would end up in logs and error messages)."""
        from urllib.parse import urlsplit

        parts = urlsplit(str(location))
        if parts.password is None:
            return str(location)
        return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()

    def _open(self, url: str):
        try:
            import psycopg
            from psycopg.rows import dict_row
        except ImportError:
            raise StoreUnavailableError("a postgresql:// job store needs psycopg: pip install 'helios-serve[postgres]'") \
                from None
        self._url = url
        connection = psycopg.connect(url, autocommit=True, row_factory=dict_row, connect_timeout=10)
        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            self._migrate(connection)
        return connection

    def _unversioned_schema(self, connection) -> int:
        return 0  # PostgreSQL stores are versioned from their first migration

    def _sql(self, query: str) -> str:
        return query.replace("?", "%s")

    def _run(self, method: str, query: str, params):
        import psycopg

        with self._lock:
            for attempt in (1, 2):
                try:
                    cursor = self._connection.execute(self._sql(query), params)
                    return cursor if method == "execute" else getattr(cursor, method)()
                except psycopg.OperationalError:
                    if attempt == 2 or not self._connection.closed:
                        raise
                    logger.warning("the job store's connection was lost; reconnecting")
                    self._connection = self._open(self._url)

    def _execute(self, query: str, params=()):
        return self._run("execute", query, params)

    def _fetchone(self, query: str, params=()):
        return self._run("fetchone", query, params)

    def _fetchall(self, query: str, params=()) -> list:
        return self._run("fetchall", query, params)
