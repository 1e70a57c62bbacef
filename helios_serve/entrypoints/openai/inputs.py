"""Conditioning inputs sent by clients: uploaded files or base64 data URLs."""

from __future__ import annotations

import base64
import binascii
import io
import re
from pathlib import Path

import numpy as np

DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,(?P<data>.*)$", re.DOTALL)


def decode_base64(value: str, field: str) -> bytes:
    """A data URL (data:image/png;base64,...) or bare base64 -> bytes; ValueError names the field."""
    match = DATA_URL.match(value)
    payload = match.group("data") if match else value
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{field} must be a base64 data URL (no web URLs: this server does not fetch)") from None


def decode_image(data: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"input_reference is not a readable image: {exc}") from None


def decode_video(path: Path) -> np.ndarray:
    from ...video_io import read_video

    try:
        return read_video(path)
    except ValueError as exc:
        raise ValueError(f"video_reference is not a readable video: {exc}") from None
