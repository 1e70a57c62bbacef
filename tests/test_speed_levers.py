"""The speed levers of the GPU path, each proved exact (bitwise on CPU) or its error bounded,
each chosen from config (issue "faster than the paper on one GPU")."""

from __future__ import annotations

import math

import pytest
import torch

from helios_serve.model_executor.models.vae import WanVAE

BF16_DECODE_MIN_PSNR_DB = 40.0
"""Measured 49-53 dB on tiny random Wan VAEs (base_dim 3, 8, 16); published for the released VAE
at 384x640: 59 dB. The bound leaves room for other CPUs' bf16 convolutions."""


def _tiny_wan_vae(decode_dtype: torch.dtype) -> WanVAE:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    return WanVAE(vae, decode_dtype)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def test_bf16_vae_decode_is_within_the_stated_psnr_and_encode_stays_fp32():
    full, half = _tiny_wan_vae(torch.float32), _tiny_wan_vae(torch.bfloat16)
    assert next(half.vae.decoder.parameters()).dtype == torch.bfloat16
    assert next(half.vae.encoder.parameters()).dtype == torch.float32
    latents = torch.randn(1, 16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    reference, frames = full.decode_frames(latents), half.decode_frames(latents)
    assert frames.dtype == torch.uint8 and frames.shape == reference.shape
    assert not torch.equal(frames, reference)  # the decode really ran in bf16
    assert _psnr(frames, reference) >= BF16_DECODE_MIN_PSNR_DB
    pixels = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    encoded = [vae.encode(pixels, torch.Generator().manual_seed(3)) for vae in (full, half)]
    assert torch.equal(*encoded)  # the encode is untouched: bitwise the fp32 one


def test_vae_dtype_is_chosen_from_the_model_config(tiny_checkpoint):
    from helios_serve.config import ModelConfig
    from helios_serve.model_executor.model_runner import ModelRunner

    _, folder = tiny_checkpoint("distilled")
    runner = ModelRunner(ModelConfig(model=str(folder), vae_dtype="bfloat16"))
    assert runner.vae.decode_dtype == torch.bfloat16
    assert ModelRunner(ModelConfig(model=str(folder))).vae.decode_dtype == torch.float32
    with pytest.raises(SystemExit):
        from helios_serve.cli import build_parser

        build_parser().parse_args(["serve", "--vae-dtype", "float16"])


# -- attention backend --------------------------------------------------------------------------
def _caps(**values):
    from helios_serve.model_executor.layers.attention_backends import Capabilities

    return Capabilities(**{"device_type": "cuda", "compute_capability": (9, 0), "cudnn_version": 91600,
                           "has_fa3": False, **values})


@pytest.mark.parametrize("capabilities, dtype, expected", [
    (dict(), torch.bfloat16, "cudnn"),  # Hopper with cuDNN 9.16: any sequence length
    (dict(cudnn_version=91500), torch.bfloat16, "flash"),  # 9.15 refuses lengths that are not multiples of 128
    (dict(cudnn_version=91500, has_fa3=True), torch.bfloat16, "fa3"),
    (dict(compute_capability=(8, 0), has_fa3=True), torch.bfloat16, "flash"),  # A100: no FA3, no cuDNN preference
    (dict(), torch.float32, "sdpa"),  # the fused kernels want half precision
    (dict(device_type="cpu", compute_capability=None, cudnn_version=None), torch.float32, "sdpa"),
])
def test_auto_picks_the_attention_backend_from_the_capabilities(capabilities, dtype, expected):
    from helios_serve.model_executor.layers.attention_backends import choose_backend

    assert choose_backend("auto", _caps(**capabilities), dtype) == expected


@pytest.mark.parametrize("requested, capabilities, dtype, mentions", [
    ("flash", dict(device_type="cpu"), torch.float32, "CUDA"),
    ("cudnn", dict(), torch.float32, "bfloat16"),
    ("fa3", dict(), torch.bfloat16, "flash_attn_interface"),
    ("xformers", dict(), torch.bfloat16, "attention_backend must be one of"),
])
def test_a_backend_that_cannot_run_is_refused_by_name(requested, capabilities, dtype, mentions):
    from helios_serve.model_executor.layers.attention_backends import choose_backend

    with pytest.raises(ValueError, match=mentions):
        choose_backend(requested, _caps(**capabilities), dtype)
    assert choose_backend("sdpa", _caps(**capabilities), dtype) == "sdpa"  # always available


def test_each_backend_gets_the_layout_it_needs():
    """SDPA kernels take [B, heads, N, d] (transposed views of our [B, N, heads, d]); FA3 takes
    [B, N, heads, d] as it is. Every backend returns [B, N, heads * d] equal to plain attention."""
    import sys
    import types

    from helios_serve.model_executor.layers.attention_backends import attention_function

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, 3, 4, generator=generator) for _ in range(3))
    weights = torch.softmax(torch.einsum("bnhd,bmhd->bhnm", q, k) / 2.0, dim=-1)
    expected = torch.einsum("bhnm,bmhd->bnhd", weights, v).flatten(2)
    torch.testing.assert_close(attention_function("sdpa")(q, k, v), expected)

    seen = {}

    def flash_attn_func(q_in, k_in, v_in):
        seen["shapes"] = [tuple(t.shape) for t in (q_in, k_in, v_in)]
        scores = torch.einsum("bnhd,bmhd->bhnm", q_in, k_in) / q_in.shape[-1] ** 0.5
        return torch.einsum("bhnm,bmhd->bnhd", torch.softmax(scores, -1), v_in), None  # (out, lse)

    fake = types.ModuleType("flash_attn_interface")
    fake.flash_attn_func = flash_attn_func
    sys.modules["flash_attn_interface"] = fake
    try:
        torch.testing.assert_close(attention_function("fa3")(q, k, v), expected)
    finally:
        del sys.modules["flash_attn_interface"]
    assert seen["shapes"] == [(2, 7, 3, 4)] * 3


def test_the_transformer_runs_the_configured_backend():
    from helios_serve.config import ModelConfig
    from helios_serve.model_executor.layers.attention import CrossAttention, SelfAttention
    from helios_serve.model_executor.layers.attention_backends import attention_function
    from helios_serve.model_executor.model_runner import ModelRunner

    runner = ModelRunner(ModelConfig(attention_backend="auto"))
    assert runner.attention_backend == runner.transformer.attention_backend == "sdpa"
    modules = [m for m in runner.transformer.modules() if isinstance(m, (SelfAttention, CrossAttention))]
    assert modules and all(m.attend is attention_function("sdpa") for m in modules)
    with pytest.raises(ValueError, match="CUDA"):
        ModelRunner(ModelConfig(attention_backend="cudnn"))


# -- per-forward bookkeeping --------------------------------------------------------------------
def _reference_block(block, h, text, modulation, rotary, num_history):
    """A Helios block as written before the bookkeeping moved out of it: the fp32 conversion of the
    modulation and its six slices per block, the cross-attention residual joined with torch.cat."""
    from helios_serve.model_executor.layers.norm import SegmentParams

    history_mod = block.scale_shift_table + modulation.history.float()
    noisy_mod = block.scale_shift_table + modulation.noisy.float()
    shift1, scale1, gate1, shift2, scale2, gate2 = (
        SegmentParams(history_mod[:, i : i + 1], noisy_mod[:, i : i + 1]) for i in range(6))
    x = block.ops.modulated_layer_norm(h, shift1, scale1, num_history, block.eps)
    h = block.ops.gated_residual(h, block.self_attn(x, rotary, num_history), gate1, num_history)
    start = num_history if block.guidance_cross_attn else 0
    queries = h[:, start:]
    queries = queries + block.cross_attn(block.norm2(queries), block.cross_attn.text_kv(text))
    h = torch.cat([h[:, :start], queries], dim=1) if start else queries
    x = block.ops.modulated_layer_norm(h, shift2, scale2, num_history, block.eps)
    return block.ops.gated_residual(h, block.ffn(x), gate2, num_history)


@pytest.mark.parametrize("kernels", ["native", "triton"])
@pytest.mark.parametrize("guidance_cross_attn", [True, False])
def test_blocks_are_bitwise_equal_to_the_per_block_bookkeeping(kernels, guidance_cross_attn):
    import dataclasses

    from helios_serve.model_executor.config import get_preset
    from helios_serve.model_executor.layers.norm import SegmentParams
    from helios_serve.model_executor.layers.rotary import rotary_table
    from helios_serve.model_executor.loader import random_init
    from helios_serve.model_executor.models.helios_transformer import HeliosBlock, HeliosTransformer

    config = dataclasses.replace(get_preset("helios-tiny"), num_layers=1, guidance_cross_attn=guidance_cross_attn)
    with torch.device("meta"):
        model = HeliosTransformer(config, batch_invariant=True, kernels=kernels)
    random_init(model, 0, torch.float32, "cpu")
    block: HeliosBlock = model.blocks[0]
    generator = torch.Generator().manual_seed(4)
    batch, history, noisy, width = 3, 10, 12, config.inner_dim
    h = torch.randn(batch, history + noisy, width, generator=generator)
    text = torch.randn(batch, 5, width, generator=generator)
    modulation = SegmentParams(torch.randn(1, 6, width, generator=generator),
                               torch.randn(batch, 6, width, generator=generator))
    rotary = rotary_table(torch.arange(history + noisy)[None], 1, 1, config.rope_dim, config.rope_theta)
    with torch.inference_mode():
        expected = _reference_block(block, h.clone(), text, modulation, rotary, history)
        got = block(h.clone(), block.cross_attn.text_kv(text), modulation, rotary, history)
    assert torch.equal(got, expected)


def test_the_row_index_is_built_once_per_geometry():
    from helios_serve.model_executor.layers.ops import TritonOps

    x = torch.zeros(2, 9, 4)
    first, again = TritonOps._row_index(x, 4), TritonOps._row_index(x.clone(), 4)
    assert first is again and first.tolist() == [0] * 4 + [1] * 5 + [2] * 4 + [3] * 5


# -- per-prompt text keys and values --------------------------------------------------------------
@pytest.mark.parametrize("model", ["helios-tiny", "helios-tiny-mid"])  # without and with CFG rows
def test_the_text_cache_gives_bitwise_the_uncached_video_in_mixed_batches(model):
    import numpy as np

    from helios_serve import HeliosEngine, VideoSamplingParams
    from helios_serve.config import ModelConfig

    prompts = ["a fox in the snow", "a lantern", "a fox in the snow"]
    params = [VideoSamplingParams(num_frames=66, height=64, width=64, seed=s, negative_prompt=n)
              for s, n in ((1, ""), (2, "blurry"), (3, "blurry"))]
    cached = HeliosEngine(model_config=ModelConfig(model=model))
    plain = HeliosEngine(model_config=ModelConfig(model=model, text_kv_cache_mb=0))
    assert plain.core.executor.runner.text_kv is None
    for a, b in zip(cached.generate(prompts, params), plain.generate(prompts, params)):
        assert np.array_equal(a.frames, b.frames)
    cache = cached.core.executor.runner.text_kv
    expected = {"a fox in the snow", "a lantern"} | ({"", "blurry"} if model.endswith("mid") else set())
    assert set(cache._entries) == expected  # keyed by the prompts' text
    assert cache.misses == len(expected) and cache.hits > 10 * cache.misses


def test_the_text_cache_is_an_lru_bounded_in_bytes():
    from helios_serve.model_executor.models.helios_transformer import HeliosTransformer
    from helios_serve.model_executor.text_kv_cache import TextKVCache, context_bytes

    transformer = HeliosTransformer.from_preset("helios-tiny")
    width = transformer.config.text_dim
    embeddings = {p: torch.randn(1, 8, width, generator=torch.Generator().manual_seed(i))
                  for i, p in enumerate("abcd")}
    one = context_bytes(transformer.text_context(embeddings["a"]))
    cache = TextKVCache(transformer, max_bytes=2 * one)
    with torch.inference_mode():
        for prompt in "abab" + "c":  # c evicts the least recently used, a
            cache.context([prompt], [embeddings[prompt]])
        assert list(cache._entries) == ["b", "c"] and cache.bytes == 2 * one <= cache.max_bytes
        batch = cache.context(["c", "b", "c"], [embeddings[p] for p in "cbc"])
        assert batch.kv[0][0].shape[0] == 3
        assert torch.equal(batch.kv[0][0][1:2], transformer.text_context(embeddings["b"]).kv[0][0])
        tiny = TextKVCache(transformer, max_bytes=one - 1)  # an entry too large to keep is used, not kept
        tiny.context(["d"], [embeddings["d"]])
        assert not tiny._entries and tiny.bytes == 0


# -- RoPE tables once per geometry ----------------------------------------------------------------
def _forward_inputs(dtype: torch.dtype = torch.float32) -> dict:
    """Two requests' rows at different timesteps with every history term; frame indices [1, t]."""
    generator = torch.Generator().manual_seed(5)

    def rand(*shape):
        return torch.randn(*shape, generator=generator).to(dtype)

    return dict(
        hidden_states=rand(2, 16, 9, 4, 6), timestep=torch.tensor([998, 385]), encoder_hidden_states=rand(2, 7, 64),
        latents_history_short=rand(2, 16, 2, 8, 12), latents_history_mid=rand(2, 16, 2, 8, 12),
        latents_history_long=rand(2, 16, 16, 8, 12), indices_hidden_states=torch.arange(20, 29)[None],
        indices_latents_history_short=torch.tensor([[0, 19]]), indices_latents_history_mid=torch.tensor([[17, 18]]),
        indices_latents_history_long=torch.arange(1, 17)[None],
    )


def _reference_sequence_table(model, inputs: dict):
    """The sequence's table as the forward built it before: one rotary_table per term, in token order."""
    from helios_serve.model_executor.layers.rotary import RotaryTable, rotary_table

    rope = (model.config.rope_dim, model.config.rope_theta)
    _, ph, pw = model.config.patch_size
    tables = []
    for term, pool in (("long", (4, 4, 4)), ("mid", (2, 2, 2)), ("short", None)):
        height, width = inputs[f"latents_history_{term}"].shape[-2:]
        tables.append(rotary_table(inputs[f"indices_latents_history_{term}"], height // ph, width // pw, *rope, pool))
    height, width = inputs["hidden_states"].shape[-2:]
    tables.append(rotary_table(inputs["indices_hidden_states"], height // ph, width // pw, *rope))
    return RotaryTable.cat(tables)


def _sequence_table(model, inputs: dict):
    history = {term: inputs[f"latents_history_{term}"] for term in ("long", "mid", "short")}
    return model.sequence_rotary_table(
        tuple(inputs["hidden_states"].shape[2:]), inputs["indices_hidden_states"],
        {term: tuple(x.shape[2:]) for term, x in history.items()},
        {term: inputs[f"indices_latents_history_{term}"] for term in history}, torch.device("cpu"),
    )


@pytest.mark.parametrize("kernels", ["native", "triton"])
def test_a_precomputed_rotary_table_gives_bitwise_the_forward_that_builds_its_own(kernels):
    from helios_serve.model_executor.layers.rotary import RotaryTable
    from helios_serve.model_executor.models.helios_transformer import HeliosTransformer

    model = HeliosTransformer.from_preset("helios-tiny", kernels=kernels)
    assert model.config.patch_size == (1, 2, 2)  # the reference's pools below are the 2x and 4x patches
    inputs = _forward_inputs()
    table = _sequence_table(model, inputs)
    reference = _reference_sequence_table(model, inputs)
    assert table.cos.shape[0] == 1  # batch 1: broadcast over the two rows, not copied per row
    assert torch.equal(table.cos, reference.cos) and torch.equal(table.sin, reference.sin)
    with torch.inference_mode():
        built_inside = model(**inputs)
        precomputed = model(**inputs, rotary=table)
        shuffled = model(**inputs, rotary=RotaryTable(table.cos.flip(1), table.sin.flip(1)))
    assert torch.equal(precomputed, built_inside)
    assert not torch.equal(shuffled, built_inside)  # the argument is what the blocks use


def test_the_runner_builds_one_rotary_table_per_geometry():
    """Every step of every stage of every chunk asks for a table; one is built per (stage, size)."""
    from helios_serve import VideoSamplingParams
    from helios_serve.config import ModelConfig
    from helios_serve.model_executor.model_runner import ModelRunner

    runner = ModelRunner(ModelConfig(model="helios-tiny"))
    built, build = [], runner.transformer.sequence_rotary_table

    def counting_build(noisy_size, *args):
        built.append(noisy_size)
        return build(noisy_size, *args)

    runner.transformer.sequence_rotary_table = counting_build  # this test's instance only
    stages, steps_per_stage, chunks = runner.procedure.sampler.stages, 2, 2
    forwards = []
    for sizes_seen, (height, width) in enumerate([(64, 64), (64, 128)], start=1):  # a new size: its own tables
        params = VideoSamplingParams(num_frames=66, height=height, width=width, seed=1, is_amplify_first_chunk=False,
                                     pyramid_num_inference_steps_list=[steps_per_stage] * stages)
        spec = params.resolve("a fox", runner.variant, has_vae=False)
        assert len(list(runner.generate(f"r{sizes_seen}", spec, on_step=lambda: forwards.append(1)))) == chunks
        assert len(built) == len(set(built)) == len(runner._rotary_tables) == stages * sizes_seen
    # Each table served every step of its stage in every chunk.
    assert len(forwards) == 2 * chunks * stages * steps_per_stage == chunks * steps_per_stage * len(built)
    for geometry in runner._rotary_tables:  # keyed by Python ints only: no tensor, no device read
        assert all(type(n) is int for n in geometry.noisy)
        assert all(type(n) is int for _, sizes in geometry.history for n in sizes)
