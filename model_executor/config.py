"""Transformer configuration and the built-in presets.

Field names and meanings are those of a diffusers-format ``transformer/config.json``
(see helios-model-spec.md §1.1), so a released config loads as it is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# Keys of a diffusers config that describe the file, not the model.
_METADATA_PREFIX = "_"


def token_counts(
    patch_size: tuple[int, int, int], latent_height: int, latent_width: int, noisy_frames: int = 9,
    history_frames=(16, 2, 2),
) -> dict[str, int]:
    """Tokens of each term of one forward; ``history_frames`` is (long, mid, short). The one
    token formula: the scheduler's budgets and the cost model both use it.

    History terms are replicate-padded up to whole kernels, so their counts round up.
    """
    pt, ph, pw = patch_size
    counts = {"noisy": (noisy_frames // pt) * (latent_height // ph) * (latent_width // pw)}
    for term, frames, scale in zip(("long", "mid", "short"), history_frames, (4, 2, 1)):
        kernel = (scale * pt, scale * ph, scale * pw)
        counts[term] = math.prod(-(-size // k) for size, k in zip((frames, latent_height, latent_width), kernel))
    counts["history"] = counts["long"] + counts["mid"] + counts["short"]
    counts["total"] = counts["history"] + counts["noisy"]
    return counts


@dataclass(frozen=True)
class HeliosTransformerConfig:
    patch_size: tuple[int, int, int] = (1, 2, 2)
    """(t, h, w) patch of the noisy chunk; history terms use 1x, 2x and 4x this."""
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    """Latent channels of the Wan-2.1 VAE."""
    out_channels: int = 16
    text_dim: int = 4096
    """Hidden size of the text encoder (UMT5-XXL)."""
    freq_dim: int = 256
    """Width of the sinusoidal timestep features."""
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    """Affine LayerNorm (norm2) before cross-attention."""
    qk_norm: str = "rms_norm_across_heads"
    eps: float = 1e-6
    added_kv_proj_dim: int | None = None
    rope_dim: tuple[int, int, int] = (44, 42, 42)
    """Head-dim split of the 3-D RoPE between time, height and width."""
    rope_theta: float = 10000.0
    guidance_cross_attn: bool = True
    """Only noisy tokens take part in text cross-attention."""
    zero_history_timestep: bool = True
    """History tokens are modulated with timestep 0."""
    has_multi_term_memory_patch: bool = True
    is_amplify_history: bool = False
    """Learnable per-head amplification of history keys (off in released weights)."""
    history_scale_mode: str = "per_head"

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        object.__setattr__(self, "rope_dim", tuple(self.rope_dim))
        if self.qk_norm != "rms_norm_across_heads":
            raise ValueError(f"qk_norm={self.qk_norm!r} is not supported; Helios uses 'rms_norm_across_heads'")
        if self.added_kv_proj_dim is not None:
            raise ValueError("added_kv_proj_dim (an image cross-attention branch) is not part of Helios")
        if not self.has_multi_term_memory_patch:
            raise ValueError("has_multi_term_memory_patch=False is not supported: Helios needs its history tokenisers")
        if self.history_scale_mode not in ("per_head", "scalar"):
            raise ValueError(f"history_scale_mode must be 'per_head' or 'scalar', got {self.history_scale_mode!r}")
        if len(self.patch_size) != 3 or len(self.rope_dim) != 3:
            raise ValueError("patch_size and rope_dim must have three entries (t, h, w)")
        if sum(self.rope_dim) != self.attention_head_dim or any(d % 2 for d in self.rope_dim):
            raise ValueError(
                f"rope_dim {self.rope_dim} must be even numbers summing to attention_head_dim={self.attention_head_dim}"
            )
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim must be even, got {self.freq_dim}")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def token_counts(
        self, latent_height: int, latent_width: int, noisy_frames: int = 9, history_frames=(16, 2, 2)
    ) -> dict[str, int]:
        return token_counts(self.patch_size, latent_height, latent_width, noisy_frames, history_frames)

    @classmethod
    def from_dict(cls, values: dict) -> HeliosTransformerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key.startswith(_METADATA_PREFIX):
                continue
            if key not in known:
                logger.warning("ignoring unknown transformer config key %r", key)
                continue
            kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> HeliosTransformerConfig:
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a JSON object")
        return cls.from_dict(values)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["patch_size"] = list(self.patch_size)
        values["rope_dim"] = list(self.rope_dim)
        return {"_class_name": "HeliosTransformer3DModel", **values}


# The released Base / Mid / Distilled checkpoints share this config (spec §1.1).
HELIOS_14B = HeliosTransformerConfig()

# A tiny model with every code path of the real one (three history tokenisers, 3-D RoPE,
# fp32 islands, 16 latent channels), small enough to serve on a laptop CPU.
HELIOS_TINY = HeliosTransformerConfig(
    num_attention_heads=2,
    attention_head_dim=32,
    rope_dim=(12, 10, 10),
    text_dim=64,
    freq_dim=64,
    ffn_dim=128,
    num_layers=2,
)

TRANSFORMER_PRESETS: dict[str, HeliosTransformerConfig] = {
    "helios-14b": HELIOS_14B,
    "helios-tiny": HELIOS_TINY,
}


def get_preset(name: str) -> HeliosTransformerConfig:
    try:
        return TRANSFORMER_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown transformer preset {name!r}; choose one of {sorted(TRANSFORMER_PRESETS)}") from None
