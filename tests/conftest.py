"""Shared fixtures: tiny diffusers reference transformers saved in diffusers format."""

from __future__ import annotations

import pytest
import torch

# A tiny config of the released architecture: every code path, a few thousand parameters.
TINY_REFERENCE_CONFIG = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    rope_dim=(8, 4, 4),
    text_dim=24,
    freq_dim=32,
    ffn_dim=48,
    num_layers=2,
)


def build_reference(seed: int = 0, **overrides):
    """A diffusers HeliosTransformer3DModel with seeded random weights, in eval mode."""
    from diffusers import HeliosTransformer3DModel

    torch.manual_seed(seed)
    model = HeliosTransformer3DModel(**{**TINY_REFERENCE_CONFIG, **overrides}).eval()
    with torch.no_grad():
        # Default init leaves biases and norm gains trivial; randomise everything so a wrong
        # mapping of any tensor shows up in the outputs.
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.copy_(torch.randn_like(param) * 0.1 + (1.0 if "norm" in name and "weight" in name else 0.0))
    return model


@pytest.fixture
def save_reference(tmp_path):
    """Save a reference model as a sharded diffusers folder; returns (model, folder)."""

    def save(seed: int = 0, max_shard_size: str = "20KB", **overrides):
        model = build_reference(seed, **overrides)
        folder = tmp_path / f"transformer-{seed}-{len(overrides)}"
        model.save_pretrained(folder, max_shard_size=max_shard_size, safe_serialization=True)
        return model, folder

    return save
