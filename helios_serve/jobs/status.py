"""A video job's status and what its listeners hear: one vocabulary for the store, the API,
SSE and the WebSocket (OpenAI's four statuses)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED)


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.IN_PROGRESS)
CANCELLED = "cancelled"
"""The error code of a job that was deleted (or stopped) before it finished."""


@dataclass(frozen=True)
class ChunkReady:
    """Chunk ``chunk_index`` is on disk (segment written, job row updated)."""

    chunk_index: int
    num_frames: int
    total_chunks: int


@dataclass(frozen=True)
class JobEnded:
    """The job reached a final status (a deleted job ends as failed with code ``cancelled``)."""

    status: JobStatus
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class PromptChanged:
    """The job follows ``prompt`` from chunk ``from_chunk`` on (blended in over ``transition_chunks``)."""

    from_chunk: int
    prompt: str
    transition_chunks: int = 0


JobEvent = ChunkReady | JobEnded | PromptChanged
