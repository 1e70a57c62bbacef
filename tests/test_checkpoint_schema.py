"""The helios-14b preset has exactly the released checkpoint's tensors (spec §1.4)."""

from __future__ import annotations

import math

import torch

from helios_serve.model_executor import HeliosTransformer
from helios_serve.model_executor.loader import checkpoint_shapes

RELEASED_TENSOR_COUNT = 1101
RELEASED_PARAMETER_COUNT = 14_312_427_584


def test_14b_schema_equals_released_checkpoint():
    from diffusers import HeliosTransformer3DModel

    ours = HeliosTransformer.from_preset("helios-14b", device="meta")
    schema = {name: shape for name, (_, _, shape) in checkpoint_shapes(ours).items()}
    assert len(schema) == RELEASED_TENSOR_COUNT
    assert sum(math.prod(shape) for shape in schema.values()) == RELEASED_PARAMETER_COUNT
    assert sum(p.numel() for p in ours.parameters()) == RELEASED_PARAMETER_COUNT

    with torch.device("meta"):
        reference = HeliosTransformer3DModel()  # diffusers' defaults are the released config
    assert schema == {name: tuple(p.shape) for name, p in reference.state_dict().items()}


def test_14b_schema_spot_checks_from_the_spec():
    schema = {n: s for n, (_, _, s) in checkpoint_shapes(HeliosTransformer.from_preset("helios-14b", device="meta")).items()}
    assert schema["patch_mid.weight"] == (5120, 16, 2, 4, 4)
    assert schema["patch_long.weight"] == (5120, 16, 4, 8, 8)
    assert schema["condition_embedder.time_proj.weight"] == (30720, 5120)
    assert schema["blocks.39.attn1.to_v.weight"] == (5120, 5120)
    assert schema["blocks.0.ffn.net.0.proj.weight"] == (13824, 5120)
    assert schema["norm_out.scale_shift_table"] == (1, 2, 5120)
    assert schema["proj_out.weight"] == (64, 5120)
    assert not any("history_key_scale" in name for name in schema)


def test_tiny_preset_is_deterministic_and_shares_the_interface():
    a = HeliosTransformer.from_preset("helios-tiny", seed=3)
    b = HeliosTransformer.from_preset("helios-tiny", seed=3)
    c = HeliosTransformer.from_preset("helios-tiny", seed=4)
    assert a.config.in_channels == a.config.out_channels == 16
    assert 2 <= a.config.num_layers <= 4
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_fp32_islands_stay_fp32_in_bf16():
    model = HeliosTransformer.from_preset("helios-tiny", dtype=torch.bfloat16)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["time_embedding.linear_1.weight"] == torch.float32
    assert dtypes["blocks.0.scale_shift_table"] == torch.float32
    assert dtypes["blocks.0.norm2.weight"] == torch.float32
    assert dtypes["output_scale_shift_table"] == torch.float32
    assert dtypes["time_embedding.time_proj.weight"] == torch.bfloat16
    assert dtypes["blocks.0.self_attn.to_qkv.weight"] == torch.bfloat16
    assert dtypes["blocks.0.self_attn.norm_q.weight"] == torch.bfloat16


def test_token_counts_match_the_forward():
    """The pure-Python token arithmetic (used for budgets) agrees with what the model builds."""
    model = HeliosTransformer.from_preset("helios-tiny")
    for height, width in [(48, 80), (12, 20), (10, 14)]:
        counts = model.config.token_counts(height, width, history_frames=(16, 2, 2))
        latents = {t: torch.zeros(1, 16, f, height, width) for t, f in (("long", 16), ("mid", 2), ("short", 2))}
        indices = {t: torch.arange(latents[t].shape[2])[None] for t in latents}
        with torch.no_grad():
            terms = model._embed_history(latents, indices, torch.float32)
        assert [term.tokens.shape[1] for term in terms] == [counts["long"], counts["mid"], counts["short"]]
    assert HeliosTransformer.from_preset("helios-14b", device="meta").config.token_counts(48, 80)["total"] == 11040
