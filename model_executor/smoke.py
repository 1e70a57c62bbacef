"""A smoke run of the transformer: load it and time denoising forwards at real geometry."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import RANDOM_MODEL, TINY_MODELS, resolve_model
from .models.helios_transformer import HeliosTransformer

# Relative temporal positions of the history layout [anchor | long 16 | mid 2 | last | noisy 9] (spec §2.3).
HISTORY_FRAMES = (16, 2, 2)  # long, mid, short (anchor + last latent)
TEXT_LENGTH = 512


@dataclass
class SmokeReport:
    model: str
    device: str
    dtype: str
    num_parameters: int
    tokens: dict[str, int]
    load_seconds: float
    forward_seconds: list[float]
    output_std: float

    def format(self) -> str:
        mean = sum(self.forward_seconds) / len(self.forward_seconds)
        t = self.tokens
        return "\n".join(
            [
                f"model      {self.model}: {self.num_parameters:,} parameters, {self.dtype} on {self.device}, "
                f"loaded in {self.load_seconds:.2f} s",
                f"tokens     {t['total']:,} per forward = {t['noisy']:,} noisy + {t['history']:,} history "
                f"(short {t['short']:,}, mid {t['mid']:,}, long {t['long']:,})",
                f"forward    {mean * 1000:.1f} ms mean over {len(self.forward_seconds)} "
                f"(min {min(self.forward_seconds) * 1000:.1f} ms)",
                f"output     finite, std {self.output_std:.3f}",
            ]
        )


def load_model(name: str, dtype: torch.dtype, device: str, seed: int = 0, download_dir: str | None = None,
               revision: str | None = None) -> HeliosTransformer:
    """The transformer of any model ``serve`` takes (resolve_model: a built-in has random weights from
    ``seed``; an alias or repo id is downloaded when the cache lacks it), or of a transformer folder
    alone (its config.json and weights, as diffusers saves one)."""
    folder = Path(os.path.expanduser(name))
    if (folder / "config.json").is_file() and not (folder / "model_index.json").is_file():
        return HeliosTransformer.from_pretrained(folder, dtype=dtype, device=device)
    location = resolve_model(name, download_dir, revision)
    if location in TINY_MODELS:
        return HeliosTransformer.from_preset("helios-tiny", seed=seed, dtype=dtype, device=device)
    if location == RANDOM_MODEL:
        return HeliosTransformer.from_preset("helios-14b", seed=seed, dtype=dtype, device=device)
    return HeliosTransformer.from_pretrained(Path(location) / "transformer", dtype=dtype, device=device)


def chunk_inputs(model: HeliosTransformer, latent_height: int, latent_width: int, seed: int, device, dtype) -> dict:
    """Inputs of a mid-video chunk: random noisy latents, full history, random text."""
    g = torch.Generator().manual_seed(seed)
    long, mid, short = HISTORY_FRAMES

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    return dict(
        hidden_states=randn(1, 16, 9, latent_height, latent_width),
        timestep=torch.tensor([742], device=device),
        encoder_hidden_states=randn(1, TEXT_LENGTH, model.config.text_dim),
        latents_history_short=randn(1, 16, short, latent_height, latent_width),
        latents_history_mid=randn(1, 16, mid, latent_height, latent_width),
        latents_history_long=randn(1, 16, long, latent_height, latent_width),
        indices_hidden_states=torch.arange(20, 29, device=device)[None],
        indices_latents_history_short=torch.tensor([[0, 19]], device=device),
        indices_latents_history_mid=torch.tensor([[17, 18]], device=device),
        indices_latents_history_long=torch.arange(1, 17, device=device)[None],
    )


def run_smoke_check(
    model_name: str, height: int, width: int, dtype: str | None, device: str | None, repeats: int, seed: int,
    download_dir: str | None = None, revision: str | None = None,
) -> SmokeReport:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    started = time.perf_counter()
    model = load_model(model_name, torch_dtype, device, seed, download_dir, revision)
    load_seconds = time.perf_counter() - started
    inputs = chunk_inputs(model, height // 8, width // 8, seed, device, torch_dtype)
    timings = []
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first forward warms up allocators and kernels
            started = time.perf_counter()
            output = model(**inputs)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - started)
    if not torch.isfinite(output).all():
        raise RuntimeError("the forward produced non-finite values")
    return SmokeReport(
        model=model_name,
        device=device,
        dtype=str(torch_dtype).removeprefix("torch."),
        num_parameters=sum(p.numel() for p in model.parameters()),
        tokens=model.config.token_counts(height // 8, width // 8, history_frames=HISTORY_FRAMES),
        load_seconds=load_seconds,
        forward_seconds=timings[1:],
        output_std=output.float().std().item(),
    )
