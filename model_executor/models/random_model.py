"""helios-distilled-random: the released 14B architecture with random weights, no checkpoint.

For measuring a GPU without 50 GB of weights: the speed of GEMMs, attention, kernels and the
VAE does not depend on the weights' values. The transformer has the released configuration
(``helios-14b`` preset, ~14B parameters), the VAE is diffusers' ``AutoencoderKLWan`` with the
Wan-2.1 configuration, and it samples like Helios-Distilled (DMD pyramid, 384x640). The text
encoder is a small random UMT5 with the released output width (4096): prompts are encoded
once per request, off the per-chunk path, so its size does not change chunk speed (the real
UMT5-XXL has 5.7B parameters and takes tens of ms per prompt on an H100). Its videos are noise.
"""

from __future__ import annotations

import torch

from ..checkpoint import ModelVariant, official_variant
from .helios_transformer import HeliosTransformer
from .tiny import tiny_text_encoder
from .vae import WanVAE

RANDOM_SEED = 0


def random_distilled_variant() -> ModelVariant:
    return official_variant("distilled")


def load_random_distilled(device: torch.device, dtype: torch.dtype, kernels: str | None, text_cache_size: int,
                          vae_dtype: torch.dtype = torch.float32, attention: str = "sdpa",
                          aux_device: torch.device | None = None):
    """(variant, transformer, text encoder, VAE) of helios-distilled-random on ``device`` (the
    text encoder and VAE on ``aux_device`` when given)."""
    aux_device = aux_device or device
    from diffusers import AutoencoderKLWan

    # 14B values drawn on the GPU: seconds there, minutes on a CPU generator.
    transformer = HeliosTransformer.from_preset("helios-14b", seed=RANDOM_SEED, dtype=dtype, device=device,
                                                kernels=kernels, draw_on_device=device.type == "cuda",
                                                attention=attention)
    text_encoder = tiny_text_encoder(aux_device, dtype, text_cache_size, width=transformer.config.text_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        vae = AutoencoderKLWan()  # the Wan-2.1 VAE configuration; runs in fp32 as the released one
    return random_distilled_variant(), transformer, text_encoder, WanVAE(vae.to(aux_device), vae_dtype)
