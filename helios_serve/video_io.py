"""Video and image files: H.264 MP4 written chunk by chunk with PyAV, and inputs read back."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


class Mp4Writer:
    """Append uint8 frames [T, H, W, 3] as they arrive; memory stays one chunk whatever the length."""

    def __init__(self, target, fps: int, crf: int = 18):
        import av

        self._container = av.open(target, mode="w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=fps)
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf)}
        self._started = False
        self.num_frames = 0

    def write(self, frames: np.ndarray) -> None:
        import av

        if not self._started:
            self._stream.height, self._stream.width = frames.shape[1], frames.shape[2]
            self._started = True
        for frame in frames:
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                self._container.mux(packet)
        self.num_frames += len(frames)

    def close(self) -> None:
        if self._started:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    buffer = io.BytesIO()
    with Mp4Writer(buffer, fps) as writer:
        writer.write(frames)
    return buffer.getvalue()


def read_video(path: str | Path) -> np.ndarray:
    """All frames of a video file as uint8 [T, H, W, 3]."""
    import av

    try:
        with av.open(str(path)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except (av.error.FFmpegError, OSError) as exc:
        raise ValueError(f"cannot read video {path}: {exc}") from exc
    if not frames:
        raise ValueError(f"video {path} has no frames")
    return np.stack(frames)


def read_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 [H, W, 3]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
