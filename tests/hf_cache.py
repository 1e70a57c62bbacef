"""A Hugging Face hub cache laid out on disk, for tests that resolve repo ids offline."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def checkpoint_files(folder: Path) -> dict[str, bytes]:
    """Every file of a checkpoint folder, by its path relative to the folder."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def lay_out_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str, refs: tuple[str, ...]) -> Path:
    """A Hugging Face hub cache as huggingface_hub writes one: blobs named by content hash, the
    snapshot's files relative symlinks to them, each ref naming the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for path, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snapshot
