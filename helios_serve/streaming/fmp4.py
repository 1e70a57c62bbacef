"""Fragmented MP4 for live video: one self-contained fragment group per Helios chunk.

Each chunk is encoded on its own (a fresh H.264 encoder, first frame a keyframe), so it can be
sent the moment it exists and a resumed job re-encodes nothing. With the same encoder settings
every chunk yields the same init segment (ftyp + moov); ffmpeg starts each chunk's fragments
at decode time 0, so their ``tfdt`` boxes are shifted to the chunk's place in the stream and the
``mfhd`` sequence numbers made continuous. ``init + media(0) + media(1) + ...`` is then one valid
fragmented MP4: the body of an HLS stream, a WebSocket stream, or the final file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from ..video_io import H264_CODEC, H264_OPTIONS, H264_PIXEL_FORMAT

CONTAINER_BOXES = {b"moov", b"trak", b"mdia", b"moof", b"traf"}


@dataclass
class Box:
    kind: bytes
    start: int
    size: int
    depth: int


def boxes(data: bytes | bytearray, start: int = 0, end: int | None = None, depth: int = 0) -> list[Box]:
    """ISO-BMFF boxes in file order, descending into the container boxes we need."""
    end = len(data) if end is None else end
    found, position = [], start
    while position + 8 <= end:
        size = int.from_bytes(data[position : position + 4], "big")
        kind = bytes(data[position + 4 : position + 8])
        if size < 8 or position + size > end:
            raise ValueError(f"malformed MP4 box {kind!r} at byte {position}")
        found.append(Box(kind, position, size, depth))
        if kind in CONTAINER_BOXES:
            found.extend(boxes(data, position + 8, position + size, depth + 1))
        position += size
    return found


def _timescale(init: bytes) -> int:
    mdhd = next(b for b in boxes(init) if b.kind == b"mdhd")
    version = init[mdhd.start + 8]
    offset = mdhd.start + (28 if version == 1 else 20)
    return int.from_bytes(init[offset : offset + 4], "big")


@dataclass
class EncodedChunk:
    init: bytes
    """ftyp + moov: the same for every chunk of a stream."""
    media: bytes
    """moof + mdat pairs of this chunk, placed after the previous chunks."""
    num_fragments: int


class ChunkEncoder:
    """Encodes chunks of uint8 frames [T, H, W, 3] into continuing fMP4 fragments."""

    def __init__(self, fps: int):
        self.fps = fps
        # zerolatency: no B-frames or lookahead, every frame leaves the encoder at once; one
        # keyframe per chunk (its first frame), as each chunk is encoded on its own.
        self.options = {**H264_OPTIONS, "tune": "zerolatency", "g": "100000"}

    def encode(self, frames: np.ndarray, first_frame: int, first_sequence: int = 1) -> EncodedChunk:
        import av

        buffer = io.BytesIO()
        container = av.open(buffer, "w", format="mp4",
                            options={"movflags": "frag_keyframe+empty_moov+default_base_moof"})
        stream = container.add_stream(H264_CODEC, rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], H264_PIXEL_FORMAT
        stream.options = self.options
        for index, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = index
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
        container.close()
        return self._place(buffer.getvalue(), first_frame, first_sequence)

    def _place(self, data: bytes, first_frame: int, first_sequence: int) -> EncodedChunk:
        top = [b for b in boxes(data) if b.depth == 0]
        init = b"".join(data[b.start : b.start + b.size] for b in top if b.kind in (b"ftyp", b"moov"))
        ticks_per_frame, remainder = divmod(_timescale(init), self.fps)
        if remainder:
            raise ValueError(f"MP4 timescale {_timescale(init)} is not a multiple of {self.fps} fps")
        media = bytearray(b"".join(data[b.start : b.start + b.size] for b in top if b.kind in (b"moof", b"mdat")))
        sequence = first_sequence
        for box in boxes(media):
            if box.kind == b"tfdt":  # baseMediaDecodeTime: shift to the chunk's place
                version = media[box.start + 8]
                width = 8 if version == 1 else 4
                at = box.start + 12
                value = int.from_bytes(media[at : at + width], "big") + first_frame * ticks_per_frame
                media[at : at + width] = value.to_bytes(width, "big")
            elif box.kind == b"mfhd":  # fragment sequence numbers continue across chunks
                media[box.start + 12 : box.start + 16] = sequence.to_bytes(4, "big")
                sequence += 1
        return EncodedChunk(init, bytes(media), sequence - first_sequence)


def remux_to_mp4(fragmented: bytes, target_path) -> None:
    """Write a progressive MP4 (moov first) with the same packets: plays everywhere, seeks well.

    Goes through a file: moving the moov to the front reopens the output.
    """
    import av

    with av.open(io.BytesIO(fragmented)) as source, av.open(
        str(target_path), "w", format="mp4", options={"movflags": "faststart"}
    ) as target:
        in_stream = source.streams.video[0]
        out_stream = target.add_stream_from_template(in_stream)
        for packet in source.demux(in_stream):
            if packet.dts is None:  # the demuxer's end-of-stream marker
                continue
            packet.stream = out_stream
            target.mux(packet)
