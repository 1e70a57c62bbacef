"""What the serving layer hands the model executor for a request. Torch-free on purpose.

``RequestSpec`` is fully resolved: every default has been filled in from the model variant
and validated by the serving layer, so the executor only does arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

FRAMES_PER_CHUNK = 33
LATENT_FRAMES_PER_CHUNK = 9
HISTORY_SIZES = (16, 2, 1)  # long, mid, short-term history latents (spec §3.1)


@dataclass(frozen=True)
class RequestSpec:
    prompt: str
    negative_prompt: str
    num_frames: int
    height: int
    width: int
    seed: int
    guidance_scale: float
    stage_steps: tuple[int, ...]
    """Denoising steps per stage: one entry for single-stage models, one per pyramid stage."""
    use_cfg_zero_star: bool = False
    use_zero_init: bool = True
    zero_steps: int = 1
    amplify_first_chunk: bool = False
    skip_first_chunk: bool = False
    image: Any = None
    """Image-to-video: PIL image, uint8 array [H, W, 3] or tensor; resized to height x width."""
    video: Any = None
    """Video-to-video: uint8 array [T, H, W, 3], list of PIL images or tensor."""
    add_noise_to_image_latents: bool = True
    add_noise_to_video_latents: bool = True
    image_noise_sigma: tuple[float, float] = (0.111, 0.135)
    video_noise_sigma: tuple[float, float] = (0.111, 0.135)
    decoder: str = "vae"
    """'vae' (the checkpoint's Wan VAE) or 'preview' (fast linear preview)."""

    @property
    def num_chunks(self) -> int:
        return max(1, math.ceil(self.num_frames / FRAMES_PER_CHUNK))

    @property
    def use_cfg(self) -> bool:
        return self.guidance_scale > 1.0

    def steps_in_chunk(self, chunk_index: int) -> tuple[int, ...]:
        """The first chunk of a distilled model may run twice the steps (amplification)."""
        if self.amplify_first_chunk and chunk_index == 0:
            return tuple(2 * n for n in self.stage_steps)
        return self.stage_steps

    def frames_in_chunk(self, chunk_index: int) -> int:
        """33 frames per chunk; the last is trimmed so the video has 4n+1 frames (spec §3.1)."""
        if chunk_index < self.num_chunks - 1:
            return FRAMES_PER_CHUNK
        total = FRAMES_PER_CHUNK * self.num_chunks
        return FRAMES_PER_CHUNK - (total - ((total - 1) // 4 * 4 + 1))

    @property
    def output_frames(self) -> int:
        return sum(self.frames_in_chunk(k) for k in range(self.num_chunks))
