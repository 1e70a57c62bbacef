"""Representation control: how T2V, I2V and V2V fill the history and the anchor (spec §3.3).

Conditioning latents are corrupted with a little noise (sigma ~ U[0.111, 0.135]) as in
training. Random draws come from the request's generator in the reference's order: VAE
posterior samples first, then the corruption.
"""

from __future__ import annotations

import torch

from .device import to_device
from .step_io import FRAMES_PER_CHUNK, HISTORY_SIZES, LATENT_FRAMES_PER_CHUNK, RequestSpec


def _video_processor():
    from diffusers.video_processor import VideoProcessor

    return VideoProcessor(vae_scale_factor=8)


def _as_pil(frame):
    """uint8 arrays become PIL images (the processor reads arrays as floats in [0, 1])."""
    import numpy as np
    from PIL import Image

    if isinstance(frame, np.ndarray) and frame.dtype == np.uint8:
        return Image.fromarray(frame)
    return frame


def _as_pil_video(video):
    import numpy as np

    if isinstance(video, np.ndarray) and video.dtype == np.uint8 and video.ndim == 4:
        return [_as_pil(frame) for frame in video]
    return video


def _corrupt(latents: torch.Tensor, sigma_range: tuple[float, float], generator, num_sigmas: int = 1) -> torch.Tensor:
    """x <- s * noise + (1 - s) * x with s ~ U[sigma_range], one s per frame when num_sigmas > 1."""
    low, high = sigma_range
    sigma = torch.rand(num_sigmas, generator=generator, device=generator.device) * (high - low) + low
    if num_sigmas > 1:
        sigma = sigma.view(1, 1, num_sigmas, 1, 1)
    sigma = to_device(sigma, latents.device)
    noise = to_device(torch.randn(latents.shape, generator=generator, device=generator.device), latents.device)
    return sigma * noise + (1 - sigma) * latents


def _empty_history(spec: RequestSpec, device) -> torch.Tensor:
    shape = (1, 16, sum(HISTORY_SIZES), spec.height // 8, spec.width // 8)
    return torch.zeros(shape, device=device, dtype=torch.float32)


def image_conditioning(spec: RequestSpec, vae, generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """I2V: the image is the anchor; a static 33-frame video of it fills the last history slot."""
    image = _video_processor().preprocess(_as_pil(spec.image), height=spec.height, width=spec.width)
    image = image.unsqueeze(2)
    anchor = vae.encode(image, generator).float().to(device)
    static_video = image.repeat(1, 1, FRAMES_PER_CHUNK, 1, 1)
    last = vae.encode(static_video, generator)[:, :, -1:].float().to(device)
    if spec.add_noise_to_image_latents:
        anchor = _corrupt(anchor, spec.image_noise_sigma, generator)
        last = _corrupt(last, spec.video_noise_sigma, generator)
    history = torch.cat([_empty_history(spec, device)[:, :, :-1], last], dim=2)
    return history, anchor


def video_conditioning(spec: RequestSpec, vae, generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """V2V: 33-frame windows aligned to the video's end fill the history; its first frame anchors."""
    video = _video_processor().preprocess_video(_as_pil_video(spec.video), height=spec.height, width=spec.width)
    num_windows = video.shape[2] // FRAMES_PER_CHUNK
    if num_windows == 0:
        raise ValueError(f"the input video needs at least {FRAMES_PER_CHUNK} frames, got {video.shape[2]}")
    start = video.shape[2] - num_windows * FRAMES_PER_CHUNK
    # Windows of the frames the reader skipped (the earliest) are not encoded, but their random
    # draws are made where the reference makes them, so the kept windows get the same numbers.
    skipped = (spec.video_skipped_frames + video.shape[2]) // FRAMES_PER_CHUNK - num_windows
    anchor = vae.encode(video[:, :, :1], generator).float().to(device)
    window_shape = vae.latent_shape(video[:, :, :FRAMES_PER_CHUNK].shape)
    for _ in range(skipped):
        vae.draw_posterior_noise(window_shape, generator)
    windows = [
        vae.encode(video[:, :, start + i * FRAMES_PER_CHUNK : start + (i + 1) * FRAMES_PER_CHUNK], generator)
        for i in range(num_windows)
    ]
    latents = torch.cat(windows, dim=2).float().to(device)
    if spec.add_noise_to_video_latents:
        anchor = _corrupt(anchor, spec.image_noise_sigma, generator)
        for _ in range(skipped):
            _corrupt(torch.zeros(window_shape), spec.video_noise_sigma, generator, num_sigmas=window_shape[2])
        chunks = latents.split(LATENT_FRAMES_PER_CHUNK, dim=2)
        latents = torch.cat(
            [_corrupt(c, spec.video_noise_sigma, generator, num_sigmas=c.shape[2]) for c in chunks], dim=2
        )
    history = torch.cat([_empty_history(spec, device), latents], dim=2)[:, :, -sum(HISTORY_SIZES) :]
    return history, anchor


def initial_history(spec: RequestSpec, vae, generator, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(history [1, 16, 19, h, w], anchor or None) for the request's mode."""
    if spec.image is not None and spec.video is not None:
        raise ValueError("give an image or a video to condition on, not both")
    if spec.image is not None:
        return image_conditioning(spec, vae, generator, device)
    if spec.video is not None:
        return video_conditioning(spec, vae, generator, device)
    return _empty_history(spec, device), None
