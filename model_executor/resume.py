"""What a request needs to continue after its last completed chunk (durable jobs).

Everything the next chunk reads: the history latents, the first-frame anchor and the state
of the request's random generator. The text embeddings are recomputed from the prompt. A
resumed request therefore continues exactly as if it had never stopped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class ResumeSnapshot:
    chunks_done: int
    history: torch.Tensor
    anchor: torch.Tensor | None
    rng_state: torch.Tensor

    def save(self, path: str | os.PathLike) -> None:
        """Callers above the executor write a snapshot through this, without importing torch."""
        save_snapshot(self, path)

    def to_dict(self) -> dict:
        return {"chunks_done": self.chunks_done, "history": self.history, "anchor": self.anchor,
                "rng_state": self.rng_state}


def save_snapshot(snapshot: ResumeSnapshot, path: str | os.PathLike) -> None:
    """Written to a temporary file and renamed: a crash never leaves half a snapshot."""
    path = Path(path)
    partial = path.with_suffix(".partial")
    torch.save(snapshot.to_dict(), partial)
    os.replace(partial, path)


def load_snapshot(path: str | os.PathLike) -> ResumeSnapshot:
    values = torch.load(path, map_location="cpu", weights_only=True)
    return ResumeSnapshot(values["chunks_done"], values["history"], values["anchor"], values["rng_state"])
