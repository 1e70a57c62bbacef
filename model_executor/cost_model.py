"""Helios costs from first principles: tokens, FLOPs and memory (performance-model.md §3).

Torch-free arithmetic on the model's configuration. FLOPs count what torch's FlopCounterMode
counts (matrix multiplies, convolutions and attention, a multiply-add being 2 FLOPs); the
elementwise work (norms, RoPE, modulation) is left out, as it is there.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from .config import HeliosTransformerConfig
from .step_io import LATENT_FRAMES_PER_CHUNK

TEXT_TOKENS = 512
"""Prompts are zero-padded to 512 UMT5 tokens, and every forward attends to all of them."""
HISTORY_FRAMES = (16, 2, 2)
"""Latent frames of the long, mid and short history terms (short = first-frame anchor + 1)."""
SPATIAL_COMPRESSION = 8


def stage_latent_sizes(height: int, width: int, num_stages: int) -> list[tuple[int, int]]:
    """Latent (h, w) of each pyramid stage: each stage before the last halves both sides."""
    h, w = height // SPATIAL_COMPRESSION, width // SPATIAL_COMPRESSION
    return [(h >> (num_stages - 1 - s), w >> (num_stages - 1 - s)) for s in range(num_stages)]


def forward_token_counts(
    config: HeliosTransformerConfig, noisy_hw: tuple[int, int], history_hw: tuple[int, int],
    history_frames: tuple[int, int, int] = HISTORY_FRAMES, noisy_frames: int = LATENT_FRAMES_PER_CHUNK,
) -> dict[str, int]:
    """Tokens of one forward by term: the noisy chunk at its (pyramid) latent size, the history
    at full latent resolution."""
    history = config.token_counts(*history_hw, noisy_frames, history_frames)
    noisy = config.token_counts(*noisy_hw, noisy_frames, history_frames)["noisy"]
    counts = {term: history[term] for term in ("long", "mid", "short", "history")}
    return {**counts, "noisy": noisy, "total": noisy + history["history"]}


def forward_tokens(config: HeliosTransformerConfig, height: int, width: int, num_stages: int) -> list[dict[str, int]]:
    """Token counts of one forward at each pyramid stage of a height x width video."""
    full = stage_latent_sizes(height, width, 1)[0]
    return [forward_token_counts(config, hw, full) for hw in stage_latent_sizes(height, width, num_stages)]


def transformer_flops(config: HeliosTransformerConfig, tokens: dict[str, int], text_tokens: int = TEXT_TOKENS) -> dict:
    """FLOPs of one transformer forward of ONE row (a CFG pair is two rows), by part."""
    seq, noisy = tokens["total"], tokens["noisy"]
    attention = 4 * seq * seq * config.inner_dim
    return _forward_flops(config, tokens, seq, noisy, attention, text_tokens)


def _forward_flops(config: HeliosTransformerConfig, tokens: dict[str, int], seq: int, noisy: int, attention: int,
                   text_tokens: int) -> dict:
    """One row's FLOPs by part, where the token-wise work runs on ``seq`` tokens (``noisy`` of them
    noisy) and the self-attention core costs ``attention`` per layer: the whole forward on one
    GPU, or one rank's share of it under sequence parallelism."""
    d, ffn, layers = config.inner_dim, config.ffn_dim, config.num_layers
    cross_tokens = noisy if config.guidance_cross_attn else seq
    per_layer = {
        "self_attention_projections": 2 * seq * d * 4 * d,
        "self_attention": attention,
        # q and o on the noisy tokens, k and v on the text, then the scores and the weighted sum.
        "cross_attention": 4 * cross_tokens * d * d + 4 * text_tokens * d * d + 4 * cross_tokens * text_tokens * d,
        "ffn": 2 * seq * d * 2 * ffn,
    }
    parts = {name: layers * flops for name, flops in per_layer.items()}
    parts["embeddings"] = _embedding_flops(config, tokens, text_tokens)
    parts["head"] = 2 * noisy * d * config.out_channels * math.prod(config.patch_size)
    parts["total"] = sum(parts.values())
    return parts


def _embedding_flops(config: HeliosTransformerConfig, tokens: dict[str, int], text_tokens: int) -> int:
    """Patch embeddings of every term, the time MLP and the text projection of one row."""
    d = config.inner_dim
    # Each history term's kernel is 1x, 2x, 4x the patch in every dimension.
    embed = 2 * d * config.in_channels * math.prod(config.patch_size) * (
        tokens["noisy"] + tokens["short"] + tokens["mid"] * 2**3 + tokens["long"] * 4**3
    )
    # The time MLP runs for the row's timestep; the history's timestep-0 conditioning is
    # computed once per forward, not per row, and is too small to matter (< 1e-6 of a forward).
    time = 2 * (config.freq_dim * d + d * d + d * 6 * d)
    text = 2 * text_tokens * (config.text_dim * d + d * d)
    return embed + time + text


# -- sequence parallelism (Ulysses) -----------------------------------------------------------------
SEQUENCE_TERMS = ("long", "mid", "short", "noisy")
"""The terms each rank holds a share of: every term is split on its own (vLLM-Omni's
``_sp_split_seq``), so every rank gets history and noisy tokens alike."""


def _check_world_size(config: HeliosTransformerConfig, world_size: int) -> None:
    # Ulysses trades the sequence split for a head split inside attention: heads must divide evenly.
    if world_size < 1 or config.num_attention_heads % world_size:
        raise ValueError(f"a sequence-parallel size must divide the {config.num_attention_heads} attention heads, "
                         f"got {world_size}")


def sequence_parallel_local_tokens(tokens: dict[str, int], world_size: int) -> dict[str, int]:
    """Tokens of each term on one rank: ceil(n / P), the last rank's share padded up to it."""
    return {term: -(-tokens[term] // world_size) for term in SEQUENCE_TERMS}


def sequence_parallel_traffic(config: HeliosTransformerConfig, tokens: dict[str, int], world_size: int,
                              rows: int = 1, element_bytes: int = 2) -> dict[str, int]:
    """Bytes ONE rank sends to the other ranks in one forward of ``rows`` rows under Ulysses
    sequence parallelism over ``world_size`` ranks, and the collective calls it makes.

    Per layer, one all-to-all of q, k and v stacked (3 x rows x n_local x D) turns the token split
    into a head split, and one of the attention output (rows x n_local x D) turns it back; each
    rank keeps 1/P of its input and sends the rest. After the head the noisy tokens' output
    (rows x local(noisy) x out_dim) is all-gathered: each rank sends its share to P - 1 others.
    ``tokens`` is a ``forward_token_counts`` dict; padding counts, as it is sent.
    """
    _check_world_size(config, world_size)
    local = sequence_parallel_local_tokens(tokens, world_size)
    n_local = sum(local.values())
    if world_size == 1:
        return {"all_to_all": 0, "all_gather": 0, "collectives": 0, "local_tokens": n_local}
    P, D = world_size, config.inner_dim
    out_dim = config.out_channels * math.prod(config.patch_size)
    return {
        "all_to_all": config.num_layers * 4 * rows * n_local * D * element_bytes * (P - 1) // P,
        "all_gather": rows * local["noisy"] * out_dim * element_bytes * (P - 1),
        "collectives": 2 * config.num_layers + 1,
        "local_tokens": n_local,
    }


def sequence_parallel_flops(config: HeliosTransformerConfig, tokens: dict[str, int], world_size: int,
                            text_tokens: int = TEXT_TOKENS) -> dict:
    """FLOPs ONE rank computes in a forward of one row under Ulysses sequence parallelism, by part
    (the parts of ``transformer_flops``, which it equals at ``world_size`` 1).

    Token-wise work (projections, FFN, cross-attention, head) runs on the rank's padded share of
    each term; the self-attention core on all S real tokens (padding is dropped before attention)
    for 1/P of the heads; the embeddings, time MLP and text projection are replicated.
    """
    _check_world_size(config, world_size)
    local = sequence_parallel_local_tokens(tokens, world_size)
    seq = tokens["total"]
    attention = 4 * seq * seq * (config.inner_dim // world_size)
    return _forward_flops(config, tokens, sum(local.values()), local["noisy"], attention, text_tokens)


def text_context_flops(config: HeliosTransformerConfig, text_tokens: int = TEXT_TOKENS) -> int:
    """FLOPs of one row's text projection and cross-attention keys and values (all layers):
    what a per-prompt text cache saves per row and forward (part of ``transformer_flops``)."""
    d = config.inner_dim
    return 2 * text_tokens * (config.text_dim * d + d * d) + config.num_layers * 4 * text_tokens * d * d


def transformer_parameters(config: HeliosTransformerConfig) -> int:
    d, ffn = config.inner_dim, config.ffn_dim
    patch_volume = math.prod(config.patch_size)

    def linear(fan_in, fan_out):
        return fan_in * fan_out + fan_out  # weight + bias

    # The noisy chunk's patch embedding, then the short, mid and long history terms' own.
    embed = sum(linear(config.in_channels * patch_volume * s**3, d) for s in (1, 1, 2, 4))
    embed += linear(config.freq_dim, d) + linear(d, d) + linear(d, 6 * d)
    embed += linear(config.text_dim, d) + linear(d, d)
    block = 4 * linear(d, d) + 2 * d  # self-attention q, k, v, o + q/k RMSNorm weights
    block += 4 * linear(d, d) + 2 * d  # cross-attention
    block += linear(d, ffn) + linear(ffn, d) + 6 * d  # FFN + modulation table
    block += 2 * d if config.cross_attn_norm else 0
    if config.is_amplify_history:
        block += config.num_attention_heads if config.history_scale_mode == "per_head" else 1
    head = linear(d, config.out_channels * patch_volume) + 2 * d
    return embed + config.num_layers * block + head


@dataclass(frozen=True)
class Umt5Config:
    """UMT5-XXL encoder of the released checkpoints."""

    d_model: int = 4096
    num_layers: int = 24
    d_ff: int = 10240
    num_heads: int = 64
    d_kv: int = 64
    vocab_size: int = 256384


def text_encoder_flops(tokens: int = TEXT_TOKENS, config: Umt5Config = Umt5Config()) -> int:
    """One prompt through the encoder: q, k, v, o projections, attention and a gated-GELU FFN."""
    inner = config.num_heads * config.d_kv
    per_token = 2 * (4 * config.d_model * inner + 3 * config.d_model * config.d_ff)
    attention = 4 * tokens * tokens * inner
    return config.num_layers * (tokens * per_token + attention)


def text_encoder_parameters(config: Umt5Config = Umt5Config()) -> int:
    inner = config.num_heads * config.d_kv
    per_layer = 4 * config.d_model * inner + 3 * config.d_model * config.d_ff + 2 * config.d_model
    relative_bias = 32 * config.num_heads * config.num_layers  # UMT5: one bias table per layer
    return config.vocab_size * config.d_model + config.num_layers * per_layer + relative_bias + config.d_model


@dataclass(frozen=True)
class WanVaeConfig:
    """The Wan-2.1 VAE decoder as the checkpoints configure it (diffusers AutoencoderKLWan)."""

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_upsample: tuple[bool, ...] = (True, True, False)


def vae_decode_flops(latent_frames: int, latent_h: int, latent_w: int, config: WanVaeConfig = WanVaeConfig()) -> int:
    """Decode of ``latent_frames`` latents to 1 + 4 (T - 1) frames at 8x the size.

    The decoder walks the latents one frame at a time with a causal cache, so every conv costs
    what it would on the whole clip: 2 x C_in x C_out x kernel volume per output voxel.
    """
    def conv(c_in, c_out, kernel_volume, voxels):
        return 2 * c_in * c_out * kernel_volume * voxels

    dims = [config.base_dim * m for m in (config.dim_mult[-1], *config.dim_mult[::-1])]
    frames, h, w = latent_frames, latent_h, latent_w

    def residual(c_in, c_out, voxels):
        shortcut = conv(c_in, c_out, 1, voxels) if c_in != c_out else 0
        return conv(c_in, c_out, 27, voxels) + conv(c_out, c_out, 27, voxels) + shortcut

    voxels = frames * h * w
    flops = conv(config.z_dim, config.z_dim, 1, voxels)  # post_quant_conv
    flops += conv(config.z_dim, dims[0], 27, voxels)  # conv_in
    tokens = h * w  # mid-block attention: one head over each frame's pixels
    flops += 2 * residual(dims[0], dims[0], voxels)
    qkv, out = conv(dims[0], 3 * dims[0], 1, tokens), conv(dims[0], dims[0], 1, tokens)
    flops += frames * (qkv + 4 * tokens * tokens * dims[0] + out)
    for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
        c_in = c_in // 2 if i > 0 else c_in  # each upsampler halves the channels it hands on
        for j in range(config.num_res_blocks + 1):
            flops += residual(c_in if j == 0 else c_out, c_out, frames * h * w)
        if i == len(config.dim_mult) - 1:
            break
        if config.temporal_upsample[i]:
            # A causal conv doubles the channels into time; the first frame is never upsampled.
            flops += conv(c_out, 2 * c_out, 3, (frames - 1) * h * w)
            frames = 1 + 2 * (frames - 1)
        h, w = 2 * h, 2 * w
        flops += conv(c_out, c_out // 2, 9, frames * h * w)  # nearest x2 then a 3x3 conv
    flops += conv(dims[-1], 3, 27, frames * h * w)  # conv_out
    return flops




# -- time ------------------------------------------------------------------------------------
KERNELS_PER_LAYER = 25
"""Kernel launches per transformer block in our forward: GEMMs, two attentions, the fused
norms, RoPE and residuals (about 1,000 at 40 blocks; gpu-review.md §1.3 D counted 1,200
before the bookkeeping was moved out of the block loop)."""


@dataclass(frozen=True)
class ForwardTiming:
    """Predicted wall time of one transformer forward on a device.

    A forward costs a fixed part, paid once however many rows it holds (the weights streamed
    from memory once, the kernels launched), plus each row's FLOPs at the achieved rate.
    Helios forwards are compute-bound from batch 1 (performance-model.md §3.8), so rows add up
    almost linearly and batching gains little; a tiny model on a CPU is closer to launch-bound.
    """

    config: HeliosTransformerConfig
    flops_per_s: float
    """Achieved FLOP/s: the device's peak times the efficiency it reaches."""
    fixed_s: float

    @classmethod
    def on_device(cls, config: HeliosTransformerConfig, weight_bytes: int, flops_per_s: float,
                  memory_bytes_per_s: float, launch_s: float) -> ForwardTiming:
        launches = config.num_layers * KERNELS_PER_LAYER
        return cls(config, flops_per_s, weight_bytes / memory_bytes_per_s + launches * launch_s)

    def row_flops(self, noisy_hw: tuple[int, int], history_hw: tuple[int, int]) -> int:
        """FLOPs of one row whose noisy chunk is ``noisy_hw`` latents and history ``history_hw``."""
        return _row_flops(self.config, noisy_hw, history_hw)

    def seconds(self, flops: int) -> float:
        """Wall time of a forward whose rows sum to ``flops``."""
        return self.fixed_s + flops / self.flops_per_s


@functools.lru_cache(maxsize=256)
def _row_flops(config: HeliosTransformerConfig, noisy_hw: tuple[int, int], history_hw: tuple[int, int]) -> int:
    return transformer_flops(config, forward_token_counts(config, noisy_hw, history_hw))["total"]


# -- memory ------------------------------------------------------------------------------------
GIB = 1024**3


def activation_bytes_per_token(config: HeliosTransformerConfig, bytes_per_element: int = 2) -> int:
    """Peak live activations of one block per token: the fp32 residual stream, the normed input,
    fused q|k|v, the attention output, the FFN's GELU input and output, and the reference's
    per-token fp32 modulation ([6, D] plus the time embedding)."""
    d = config.inner_dim
    stream = 4 * d + bytes_per_element * (d + 3 * d + d + 2 * config.ffn_dim)
    modulation = 4 * 7 * d
    return stream + modulation
