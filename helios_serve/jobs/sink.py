"""Where a job's chunks go: fMP4 segments, the thumbnail, the resume snapshot, the final MP4.

Order matters for crash safety: a chunk's segment is written (atomically) before its resume
snapshot, so a snapshot never runs ahead of the segments on disk; after the last chunk the
final MP4 is assembled from the segments (the last snapshot stays: an extension continues from it).
"""

from __future__ import annotations

import numpy as np

from ..model_executor.step_io import chunk_frame_counts
from ..outputs import VideoChunkOutput
from ..streaming.fmp4 import ChunkEncoder, remux_to_mp4
from .storage import JobFiles

FRAGMENTS_PER_CHUNK = 64  # room in the fMP4 sequence numbering, so chunk k's numbers never depend on earlier ones
LIVE_PLAYLIST_SEGMENTS = 8
"""A live stream's HLS playlist (and a late SSE subscriber's replay) lists its last this many segments."""
LIVE_KEPT_SEGMENTS = 2 * LIVE_PLAYLIST_SEGMENTS
"""A live stream without ``keep`` keeps its last this many segments on disk: a segment stays a
playlist's length after it left the playlist (RFC 8216 6.2.2), for players still fetching it."""


class ChunkSink:
    """Writes one job's chunks; blocking file and encoder work (run it off the event loop)."""

    def __init__(self, files: JobFiles, job_id: str, fps: int, num_frames: int, window: int | None = None,
                 build_video: bool = True):
        """``window``: keep only the last this many segments (a live stream; None keeps all);
        ``build_video``: assemble the final MP4 after the last chunk (not for a live stream)."""
        self.files, self.job_id = files, job_id
        self.window, self.build_video = window, build_video
        directory = files.job_dir(job_id)
        self.bytes_kept = sum(p.stat().st_size for p in directory.glob("seg_*.m4s")) if directory.exists() else 0
        """Bytes of the segments on disk (a kept live stream is ended when they pass its limit)."""
        self.encoder = ChunkEncoder(fps)
        counts = chunk_frame_counts(num_frames)
        self.first_frames = np.cumsum([0, *counts]).tolist()
        """Index of each chunk's first frame in the whole video."""
        self.last_chunk = len(counts) - 1

    def write(self, chunk: VideoChunkOutput) -> None:
        """Chunk k's segment (chunk 0 also the init segment and thumbnail), then its snapshot;
        after the last chunk, the final MP4. The last chunk's snapshot is kept, and when the
        chunk was trimmed so is its untrimmed segment: what an extension of the video continues
        from (jobs/extend.py)."""
        files, job_id, index = self.files, self.job_id, chunk.chunk_index
        encoded = self.encoder.encode(chunk.frames, self.first_frames[index], index * FRAGMENTS_PER_CHUNK + 1)
        if index == 0:
            files.init_segment(job_id).write_bytes(encoded.init)
            self._write_thumbnail(chunk.frames[0])
        self._replace(files.segment(job_id, index), encoded.media)
        self.bytes_kept += len(encoded.media)
        if self.window is not None and index >= self.window:  # a live stream keeps only its last window
            old = files.segment(job_id, index - self.window)
            if old.exists():
                self.bytes_kept -= old.stat().st_size
                old.unlink(missing_ok=True)
        if index == self.last_chunk and chunk.cut_frames is not None:
            untrimmed = np.concatenate([chunk.frames, chunk.cut_frames])
            full = self.encoder.encode(untrimmed, self.first_frames[index], index * FRAGMENTS_PER_CHUNK + 1)
            self._replace(files.full_last_segment(job_id), full.media)
        if chunk.resume_state is not None:
            chunk.resume_state.save(files.snapshot(job_id))
        if index == self.last_chunk and self.build_video:
            self.finish()

    @staticmethod
    def _replace(path, data: bytes) -> None:
        """Written to a temporary file and renamed: a crash never leaves half a segment."""
        path.with_suffix(".partial").write_bytes(data)
        path.with_suffix(".partial").replace(path)

    def _write_thumbnail(self, frame: np.ndarray) -> None:
        from PIL import Image

        Image.fromarray(frame).save(self.files.thumbnail(self.job_id), format="WEBP", quality=80)

    def finish(self) -> None:
        """The final progressive MP4 from the segments on disk (the snapshot is kept for extensions)."""
        files, job_id = self.files, self.job_id
        parts = [files.init_segment(job_id).read_bytes()]
        parts += [files.segment(job_id, k).read_bytes() for k in range(files.segments_present(job_id))]
        partial = files.video(job_id).with_suffix(".partial.mp4")
        remux_to_mp4(b"".join(parts), partial)
        partial.replace(files.video(job_id))
