"""The job store's schema as numbered migrations, the same for SQLite and PostgreSQL.

A store records the last migration applied (``schema_version``) and applies the later ones in
order, in one transaction, at open. Several replicas opening a PostgreSQL store at once take
turns (an advisory lock), so each migration runs exactly once.

A SQLite store written before migrations existed has the ``videos`` table but no version: it
is stamped with the migrations its columns show (the only one since then added ``owner``).
"""

from __future__ import annotations

MIGRATIONS: list[tuple[str, dict[str, str]]] = [
    ("create the videos table", {
        "sqlite": "CREATE TABLE videos (seq INTEGER PRIMARY KEY AUTOINCREMENT, {columns})",
        "postgresql": "CREATE TABLE videos (seq BIGSERIAL PRIMARY KEY, {columns})",
    }),
    ("a job's owner: the engine replica running it", {
        "sqlite": "ALTER TABLE videos ADD COLUMN owner TEXT",
        "postgresql": "ALTER TABLE videos ADD COLUMN owner TEXT",
    }),
    ("find expired videos without a scan", {
        "sqlite": "CREATE INDEX videos_expires_at ON videos (expires_at)",
        "postgresql": "CREATE INDEX videos_expires_at ON videos (expires_at)",
    }),
]
"""(what it does, SQL by dialect); the list only grows: a released migration never changes."""

VIDEO_COLUMNS = """
    id TEXT UNIQUE NOT NULL,
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    request_json TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    num_frames INTEGER NOT NULL,
    fps INTEGER NOT NULL,
    total_chunks INTEGER NOT NULL,
    chunks_completed INTEGER NOT NULL DEFAULT 0,
    progress INTEGER NOT NULL DEFAULT 0,
    completed_at BIGINT,
    expires_at BIGINT,
    error_code TEXT,
    error_message TEXT,
    timings_json TEXT NOT NULL DEFAULT '{}'
"""
MIGRATION_LOCK = 0x4E11_0500
"""PostgreSQL advisory lock key held while migrating (any constant the application owns)."""


def statements(dialect: str, start: int) -> list[tuple[int, str]]:
    """(version, SQL) of each migration after ``start``, for ``dialect``."""
    return [(version, sql[dialect].format(columns=VIDEO_COLUMNS.strip()))
            for version, (_, sql) in enumerate(MIGRATIONS, start=1) if version > start]


def legacy_sqlite_version(columns: set[str]) -> int:
    """The migrations a SQLite ``videos`` table made before versioning has had (0: no table)."""
    if not columns:
        return 0
    return 2 if "owner" in columns else 1
