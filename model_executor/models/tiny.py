"""helios-tiny: a built-in model with every code path of Helios, no download, CPU-sized.

A tiny random transformer (the ``helios-tiny`` preset), a tiny random UMT5 text encoder with
a byte-level tokenizer built in code, and the linear preview decoder instead of the VAE.
All weights are seeded, so every machine builds the same model.
"""

from __future__ import annotations

import torch

from ..config import HELIOS_TINY
from .text_encoder import TextEncoder
from .vae import PreviewDecoder

TINY_SEED = 0
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def byte_level_tokenizer():
    """A T5-style fast tokenizer over raw bytes: every prompt gets distinct tokens, offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *alphabet])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_text_encoder(device="cpu", dtype: torch.dtype = torch.float32, cache_size: int = 64,
                      width: int = HELIOS_TINY.text_dim) -> TextEncoder:
    """A 2-layer random UMT5 with the byte-level tokenizer; ``width`` is its output (the
    transformer's text_dim)."""
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = byte_level_tokenizer()
    config = UMT5Config(
        vocab_size=len(tokenizer),
        d_model=width,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
    )
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(TINY_SEED)
        encoder = UMT5EncoderModel(config)
    return TextEncoder(tokenizer, encoder.to(device=device, dtype=dtype), cache_size=cache_size)


def tiny_preview_decoder() -> PreviewDecoder:
    return PreviewDecoder.seeded(TINY_SEED)


def tiny_variant(name: str = "helios-tiny"):
    """How a tiny model samples. helios-tiny works like Helios-Distilled (3-stage pyramid, DMD,
    amplified first chunk); helios-tiny-mid like Mid (pyramid UniPC, CFG-Zero*); helios-tiny-base
    like Base (one-stage UniPC, CFG). Step counts are cut down to keep CPU runs quick."""
    from ..checkpoint import ModelVariant
    from ..sampling.schedules import SamplerScheduleConfig

    sizes = dict(default_height=192, default_width=320)
    if name == "helios-tiny-mid":
        sampler = SamplerScheduleConfig(kind="unipc", stages=3, use_dynamic_shifting=True)
        return ModelVariant("tiny-mid", sampler, True, False, (3, 3, 3), 5.0, False, **sizes)
    if name == "helios-tiny-base":
        sampler = SamplerScheduleConfig(kind="unipc", stages=1, stage_range=(0.0, 1.0), use_dynamic_shifting=True)
        return ModelVariant("tiny-base", sampler, False, False, (8,), 5.0, False, **sizes)
    sampler = SamplerScheduleConfig(kind="dmd", stages=3, use_dynamic_shifting=True, time_shift_type="linear")
    return ModelVariant("tiny", sampler, False, True, (2, 2, 2), 1.0, True, **sizes)
