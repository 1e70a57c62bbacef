"""Where a job's chunks go: fMP4 segments, the thumbnail, the resume snapshot, the final MP4.

Order matters for crash safety: a chunk's segment is written (atomically) before its resume
snapshot, so a snapshot never runs ahead of the segments on disk; after the last chunk the
final MP4 is assembled from the segments and the snapshot is dropped.
"""

from __future__ import annotations

import numpy as np

from ..model_executor.step_io import chunk_frame_counts
from ..outputs import VideoChunkOutput
from ..streaming.fmp4 import ChunkEncoder, remux_to_mp4
from .storage import JobFiles

FRAGMENTS_PER_CHUNK = 64  # room in the fMP4 sequence numbering, so chunk k's numbers never depend on earlier ones


class ChunkSink:
    """Writes one job's chunks; blocking file and encoder work (run it off the event loop)."""

    def __init__(self, files: JobFiles, job_id: str, fps: int, num_frames: int):
        self.files, self.job_id = files, job_id
        self.encoder = ChunkEncoder(fps)
        counts = chunk_frame_counts(num_frames)
        self.first_frames = np.cumsum([0, *counts]).tolist()
        """Index of each chunk's first frame in the whole video."""
        self.last_chunk = len(counts) - 1

    def write(self, chunk: VideoChunkOutput) -> None:
        """Chunk k's segment (chunk 0 also the init segment and thumbnail), then its snapshot;
        after the last chunk, the final MP4."""
        files, job_id, index = self.files, self.job_id, chunk.chunk_index
        encoded = self.encoder.encode(chunk.frames, self.first_frames[index], index * FRAGMENTS_PER_CHUNK + 1)
        if index == 0:
            files.init_segment(job_id).write_bytes(encoded.init)
            self._write_thumbnail(chunk.frames[0])
        segment = files.segment(job_id, index)
        segment.with_suffix(".partial").write_bytes(encoded.media)
        segment.with_suffix(".partial").replace(segment)
        if index == self.last_chunk:
            self.finish()
        elif chunk.resume_state is not None:
            chunk.resume_state.save(files.snapshot(job_id))

    def _write_thumbnail(self, frame: np.ndarray) -> None:
        from PIL import Image

        Image.fromarray(frame).save(self.files.thumbnail(self.job_id), format="WEBP", quality=80)

    def finish(self) -> None:
        """The final progressive MP4 from the segments on disk; the resume snapshot is dropped."""
        files, job_id = self.files, self.job_id
        parts = [files.init_segment(job_id).read_bytes()]
        parts += [files.segment(job_id, k).read_bytes() for k in range(files.segments_present(job_id))]
        partial = files.video(job_id).with_suffix(".partial.mp4")
        remux_to_mp4(b"".join(parts), partial)
        partial.replace(files.video(job_id))
        files.snapshot(job_id).unlink(missing_ok=True)
