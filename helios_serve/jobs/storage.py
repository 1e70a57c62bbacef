"""Where a job's files live: <data-dir>/videos/<id>/ (fMP4 segments, final MP4, thumbnail, resume state).

Job ids are checked against one pattern before any path is built, so no id can address a
file outside the data directory.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

JOB_ID_PATTERN = re.compile(r"^video_[0-9a-f]{32}$")


def new_job_id() -> str:
    return f"video_{uuid.uuid4().hex}"


def is_job_id(value: str) -> bool:
    return bool(JOB_ID_PATTERN.match(value))


class JobFiles:
    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir).resolve()
        (self.root / "videos").mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str, create: bool = False) -> Path:
        if not is_job_id(job_id):
            raise ValueError(f"not a video id: {job_id!r}")
        path = self.root / "videos" / job_id
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def init_segment(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "init.mp4"

    def segment(self, job_id: str, index: int) -> Path:
        return self.job_dir(job_id) / f"seg_{index:05d}.m4s"

    def full_last_segment(self, job_id: str) -> Path:
        """The last chunk untrimmed (its frames and those cut to make a 4n+1 video), kept for extensions."""
        return self.job_dir(job_id) / "seg_full_last.m4s"

    def video(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "video.mp4"

    def thumbnail(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "thumbnail.webp"

    def snapshot(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "resume.pt"

    def input(self, job_id: str, name: str) -> Path:
        return self.job_dir(job_id, create=True) / f"input_{name}"

    def segments_present(self, job_id: str) -> int:
        """How many consecutive segments from 0 are on disk."""
        count = 0
        while self.segment(job_id, count).exists():
            count += 1
        return count

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    @property
    def database(self) -> Path:
        return self.root / "jobs.sqlite3"
