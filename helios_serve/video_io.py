"""Video and image files: H.264 MP4 written chunk by chunk with PyAV, and inputs read back."""

from __future__ import annotations

import io
import math
import threading
from typing import NamedTuple
from pathlib import Path

import numpy as np

from .model_executor.step_io import FRAMES_PER_CHUNK, HISTORY_SIZES, LATENT_FRAMES_PER_CHUNK

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


# -- inputs ---------------------------------------------------------------------------------------
# Uploads are small files that can declare huge pictures: a 140 KB PNG may say 12000x12000, a 23 KB
# MP4 may hold 300 frames of 1080p. So an input is measured from its header (and a video from its
# packets) before anything is decoded, and a video keeps only the frames the model uses, each
# resized to the request's size as it is decoded.

MAX_INPUT_PIXELS = 4096 * 4096
"""Pixels an input image or video frame may declare (16.8 M: 4K video and common photos; 50 MB as
RGB). A request for a larger output may send inputs of its own size (``input_pixel_cap``)."""
MAX_INPUT_VIDEO_FRAMES = 3000
"""Frames a video input may have (two minutes at 24 fps). Their packets are all read; of the frames
only the first and those from the last keyframe before the model's are decoded, or all of them
when the video has no such keyframe."""
MAX_INPUT_DECODE_PIXELS = 2**32
"""Pixels of all of a video input's frames together, a bound on the decoding work (about 2000
frames of 1080p, 500 of 4K)."""
VIDEO_HISTORY_FRAMES = FRAMES_PER_CHUNK * math.ceil(sum(HISTORY_SIZES) / LATENT_FRAMES_PER_CHUNK)
"""Frames at the end of a video-to-video input that reach the model (99): its conditioning
(model_executor/conditioning.py) encodes 33-frame windows aligned to the video's end and keeps the
last sum(HISTORY_SIZES) = 19 latent frames, 9 per window, so three windows; and the first frame,
the anchor. ``read_video_tail`` keeps those."""

_DECODE_SLOTS = threading.BoundedSemaphore(2)
"""Inputs decoded at once in this process: each decode is bounded, and this keeps several
requests' decodes from stacking up."""


def input_pixel_cap(size: tuple[int, int] | None) -> int:
    """The most pixels an input may declare for a request of ``size`` (width, height): the
    request's own frame is always allowed (the request itself is bounded by the largest side)."""
    return max(MAX_INPUT_PIXELS, size[0] * size[1]) if size else MAX_INPUT_PIXELS


def read_video(path: str | Path, name: str | None = None, *, size: tuple[int, int] | None = None,
               keep_last: int | None = None, max_frames: int = MAX_INPUT_VIDEO_FRAMES,
               max_pixels: int | None = None) -> np.ndarray:
    """Frames of a video file as uint8 [T, H, W, 3]; errors (ValueError) name ``name`` (else the path).

    All frames, or with ``keep_last`` the first frame and the last ``keep_last`` (those the model
    uses, VIDEO_HISTORY_FRAMES). ``size`` (width, height) resizes each kept frame as it is
    decoded, with the Lanczos filter of the model's own preprocessing, so the model sees the same
    pixels as from the full-size frame. Videos with frames over ``max_pixels`` (default
    ``input_pixel_cap(size)``), over ``max_frames`` frames or over MAX_INPUT_DECODE_PIXELS in all
    are refused from the container's header and packets, before their frames are decoded. Memory is
    the kept frames plus the decoder's few frames at source size, whatever the video's length.
    """
    return _read_video(path, name or str(path), size, keep_last, max_frames, max_pixels)[0]


class VideoTail(NamedTuple):
    """What the model uses of a video-to-video input."""

    frames: np.ndarray
    """The first frame (the anchor), then the last VIDEO_HISTORY_FRAMES (all of a shorter video)."""
    skipped_frames: int
    """The frames between them, never decoded. Their conditioning windows still make their random
    draws (conditioning.py), so a seed gives the video the whole input would."""


def read_video_tail(path: str | Path, name: str | None = None, *, size: tuple[int, int] | None = None) -> VideoTail:
    """The frames of a video input the model uses (read_video's caps and resizing apply)."""
    frames, count = _read_video(path, name or str(path), size, VIDEO_HISTORY_FRAMES, MAX_INPUT_VIDEO_FRAMES, None)
    return VideoTail(frames, count - len(frames))


def _read_video(path, name: str, size, keep_last: int | None, max_frames: int, max_pixels: int | None
                ) -> tuple[np.ndarray, int]:
    """(kept frames, the video's frame count)."""
    import av

    max_pixels = max_pixels or input_pixel_cap(size)
    with _DECODE_SLOTS:
        try:
            index = _index_video(path, name, max_pixels, max_frames)
            frames, count = _decode_ends(path, name, index, size, keep_last, max_pixels), index.count
            if frames is None:  # everything is kept, or a seek would save nothing: one pass over all frames
                frames, count = _decode_all(path, name, index.count, size, keep_last, max_pixels, max_frames)
        except (av.error.FFmpegError, OSError) as exc:
            raise ValueError(f"{name} is not a readable video: {_reason(exc)}") from None
    if frames is None:
        raise ValueError(f"{name} has no video frames")
    return frames, count


class _PacketIndex(NamedTuple):
    """What a video's packets say, before anything is decoded."""

    count: int
    timestamps: list[int] | None
    """Each frame's presentation timestamp, in presentation order. None when a frame has none or
    two share one: a decoded frame's place could not then be told from its timestamp."""
    keyframes: list[int]
    """Timestamps of the frames a decode can start from after a seek."""


def _index_video(path, name: str, max_pixels: int, max_frames: int) -> _PacketIndex:
    """The video's frames, counted from its packets (nothing is decoded); ValueError beyond the caps."""
    with _open_video(path, max_pixels) as container:
        if not container.streams.video:
            raise ValueError(f"{name} has no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_pixels(name, width, height, max_pixels)
        if stream.frames > max_frames:  # the container's own count, when it has one: not even demuxed then
            raise ValueError(f"{name} has {stream.frames} frames; at most {max_frames} are accepted")
        timestamps, keyframes = [], []
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer ends with an empty packet
                continue
            if len(timestamps) == max_frames:
                raise ValueError(f"{name} has more than {max_frames} frames; at most {max_frames} are accepted")
            timestamps.append(packet.pts)
            if packet.is_keyframe:
                keyframes.append(packet.pts)
    count = len(timestamps)
    if count * width * height > MAX_INPUT_DECODE_PIXELS:
        raise ValueError(f"{name} is too long for its size: {count} frames of {width}x{height}, at most "
                         f"{MAX_INPUT_DECODE_PIXELS // max(width * height, 1)} frames are accepted at this size")
    if None in timestamps or len(set(timestamps)) != count:
        return _PacketIndex(count, None, [])
    return _PacketIndex(count, sorted(timestamps), keyframes)


def _decode_ends(path, name: str, index: _PacketIndex, size, keep_last: int | None, max_pixels: int
                 ) -> np.ndarray | None:
    """The first frame and the last ``keep_last``: the first frame decoded, then a seek to the last
    keyframe at or before the tail, so the frames between are never decoded. A frame's place is
    its timestamp's among the packets'. None when that saves nothing (no keyframe after the
    first frame precedes the tail, or every frame is kept) or when the decoder's frames do not
    match the packets: the caller then decodes every frame."""
    if keep_last is None or _kept_count(index.count, keep_last) == index.count or index.timestamps is None:
        return None
    place = {pts: i for i, pts in enumerate(index.timestamps)}
    tail_start = index.count - keep_last
    start = max((place[pts] for pts in index.keyframes if place[pts] <= tail_start), default=0)
    if start == 0:
        return None
    filled = set()
    with _open_video(path, max_pixels) as container:
        stream = container.streams.video[0]
        stream.codec_context.options = {"max_pixels": str(max_pixels)}
        anchor = next(_decoded(container, stream), None)
        if anchor is None or place.get(anchor.pts) != 0:
            return None
        kept = _keep(None, 0, anchor, size, 1 + keep_last, name)
        container.seek(index.timestamps[start], stream=stream, backward=True, any_frame=False)
        for frame in _decoded(container, stream):
            if (position := place.get(frame.pts)) is None:
                return None
            if position >= tail_start:
                kept = _keep(kept, 1 + position - tail_start, frame, size, 1 + keep_last, name)
                filled.add(position)
    return kept if len(filled) == keep_last else None


def _decode_all(path, name: str, count: int, size, keep_last: int | None, max_pixels: int, max_frames: int
                ) -> tuple[np.ndarray | None, int]:
    """(kept frames, the video's frame count), from one pass over every frame, or two when the
    packets and the decoder's frames disagree (the second with the decoder's count)."""
    frames, decoded = _decode_video(path, name, count, size, keep_last, max_pixels, max_frames)
    if decoded != count:
        frames, decoded_again = _decode_video(path, name, decoded, size, keep_last, max_pixels, max_frames)
        if decoded_again != decoded:
            raise ValueError(f"{name} is not a readable video: its frames differ from one decode to the next")
    return frames, decoded


def _decode_video(path, name: str, count: int, size, keep_last: int | None, max_pixels: int,
                  max_frames: int) -> tuple[np.ndarray | None, int]:
    """(kept frames, frames decoded): a video of ``count`` frames decoded once, each kept frame
    converted into its slot of one array as it comes. The kept frames are right when the
    decoder gives ``count`` frames (the caller decodes again otherwise)."""
    kept, decoded = None, 0
    with _open_video(path, max_pixels) as container:
        stream = container.streams.video[0]
        # The decoder refuses frames over the cap itself, should a stream change size after its header.
        stream.codec_context.options = {"max_pixels": str(max_pixels)}
        for frame in _decoded(container, stream):
            if decoded >= max_frames:
                raise ValueError(f"{name} has more than {max_frames} frames; at most {max_frames} are accepted")
            slot = _frame_slot(decoded, count, keep_last)
            if slot is not None:
                kept = _keep(kept, slot, frame, size, _kept_count(count, keep_last), name)
            decoded += 1
    return kept, decoded


def _decoded(container, stream):
    """The stream's frames as the decoder gives them (one place, so a test can count them)."""
    return container.decode(stream)


def _keep(kept: np.ndarray | None, slot: int, frame, size, total: int, name: str) -> np.ndarray:
    """``kept`` with ``frame`` converted into ``slot`` (the array of ``total`` frames is made at the first)."""
    rgb = _rgb_frame(frame, size)
    if kept is None:
        kept = np.empty((total, *rgb.shape), np.uint8)
    elif rgb.shape != kept.shape[1:]:
        raise ValueError(f"{name} changes its frame size from {kept.shape[2]}x{kept.shape[1]} to "
                         f"{rgb.shape[1]}x{rgb.shape[0]}")
    kept[slot] = rgb
    return kept


def _open_video(path, max_pixels: int):
    """The container, opened with the pixel cap: opening decodes a first frame to learn the stream's
    parameters, and a frame over the cap is not decoded then (its size is read all the same)."""
    import av

    return av.open(str(path), options={"max_pixels": str(max_pixels)})


def _kept_count(count: int, keep_last: int | None) -> int:
    return count if keep_last is None else min(count, keep_last + 1)


def _frame_slot(index: int, count: int, keep_last: int | None) -> int | None:
    """Where frame ``index`` of ``count`` goes among the kept ones (the first, then the last
    ``keep_last``), or None when it is not kept."""
    if index >= count:
        return None
    if _kept_count(count, keep_last) == count:
        return index
    tail_start = count - keep_last
    if index == 0:
        return 0
    return 1 + index - tail_start if index >= tail_start else None


def _rgb_frame(frame, size: tuple[int, int] | None) -> np.ndarray:
    """A decoded frame as uint8 [H, W, 3], resized to ``size`` (width, height) when given."""
    if size is None or (frame.width, frame.height) == tuple(size):
        return frame.to_ndarray(format="rgb24")
    from PIL import Image

    # From the array, not frame.to_image(): that makes two more copies of the full-size frame.
    return np.asarray(_resized(Image.fromarray(frame.to_ndarray(format="rgb24")), size))


def _resized(image, size: tuple[int, int] | None):
    """``image`` at ``size`` (width, height). Lanczos, as the model's VideoProcessor resizes
    (diffusers, resample="lanczos"): its own resize to the same size is then a copy, so the model
    gets the same pixels as when it resized the full-size input itself."""
    from PIL import Image

    if size is None or image.size == tuple(size):
        return image
    return image.resize(tuple(size), Image.Resampling.LANCZOS)


def _check_pixels(name: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ValueError(f"{name} is {width}x{height} pixels; at most {max_pixels} pixels "
                         f"(e.g. {math.isqrt(max_pixels)}x{math.isqrt(max_pixels)}) are accepted")


def read_image(path: str | Path, *, size: tuple[int, int] | None = None, max_pixels: int | None = None) -> np.ndarray:
    """An image file as uint8 [H, W, 3] (see ``read_image_bytes``)."""
    return _read_image(path, str(path), size, max_pixels)


def read_image_bytes(data: bytes, name: str, *, size: tuple[int, int] | None = None,
                     max_pixels: int | None = None) -> np.ndarray:
    """An encoded image (PNG, JPEG, WebP, ...) as uint8 [H, W, 3]; errors (ValueError) name ``name``.

    Resized to ``size`` (width, height) when given, as the model would resize it. An image over
    ``max_pixels`` (default ``input_pixel_cap(size)``) is refused from its header, before decoding."""
    return _read_image(io.BytesIO(data), name, size, max_pixels)


def _read_image(source, name: str, size: tuple[int, int] | None, max_pixels: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    max_pixels = max_pixels or input_pixel_cap(size)
    with _DECODE_SLOTS:
        try:
            with Image.open(source) as image:  # reads the header only: the size is known, nothing is decoded
                _check_pixels(name, *image.size, max_pixels)
                rgb = image if image.mode == "RGB" else image.convert("RGB")  # convert() would copy an RGB image
                return np.asarray(_resized(rgb, size))
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise ValueError(f"{name} is not a readable image: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    """An error's reason without file paths (they would tell clients where the server keeps data)."""
    return getattr(exc, "strerror", None) or type(exc).__name__ if getattr(exc, "filename", None) else str(exc)
