"""What the engine returns to callers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class VideoChunkOutput:
    request_id: str
    chunk_index: int
    num_chunks: int
    frames: np.ndarray
    """uint8 [T, H, W, 3] of this chunk (33 frames; the last chunk trimmed to a 4n+1 video)."""
    resume_state: Any = None
    """For resumable requests: what the next chunk needs (model_executor.resume.ResumeSnapshot)."""
    cut_frames: Any = None
    """Of a trimmed last chunk: the frames cut off its end (a longer video has them); else None."""


@dataclass
class VideoOutput:
    request_id: str
    prompt: str
    frames: np.ndarray
    """uint8 [T, H, W, 3], the whole video."""
    fps: int
    num_chunks: int
    elapsed_seconds: float = 0.0
    """Wall time from submission to the last chunk."""
