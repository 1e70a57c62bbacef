"""Video and image files: H.264 MP4 written chunk by chunk with PyAV, and inputs read back."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

H264_CODEC, H264_PIXEL_FORMAT = "libx264", "yuv420p"
H264_OPTIONS = {"crf": "20", "preset": "veryfast"}
"""The one H.264 quality setting of every video we write: the CLI's MP4 and the server's
segments (which add live-streaming options, see streaming/fmp4.py)."""


class Mp4Writer:
    """Append uint8 frames [T, H, W, 3] as they arrive; memory stays one chunk whatever the length."""

    def __init__(self, target, fps: int):
        import av

        self._container = av.open(target, mode="w", format="mp4")
        self._stream = self._container.add_stream(H264_CODEC, rate=fps)
        self._stream.pix_fmt = H264_PIXEL_FORMAT
        self._stream.options = dict(H264_OPTIONS)
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


def read_video(path: str | Path, name: str | None = None) -> np.ndarray:
    """All frames of a video file as uint8 [T, H, W, 3]; errors name ``name`` (else the path)."""
    import av

    name = name or str(path)
    try:
        with av.open(str(path)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except (av.error.FFmpegError, OSError) as exc:
        raise ValueError(f"{name} is not a readable video: {_reason(exc)}") from None
    if not frames:
        raise ValueError(f"{name} has no video frames")
    return np.stack(frames)


def read_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 [H, W, 3]."""
    return _read_image(path, str(path))


def read_image_bytes(data: bytes, name: str) -> np.ndarray:
    """An encoded image (PNG, JPEG, WebP, ...) as uint8 [H, W, 3]; errors name ``name``."""
    return _read_image(io.BytesIO(data), name)


def _read_image(source, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{name} is not a readable image: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    """An error's reason without file paths (they would tell clients where the server keeps data)."""
    return getattr(exc, "strerror", None) or type(exc).__name__ if getattr(exc, "filename", None) else str(exc)
