"""User-facing generation settings, validated, with defaults taken from the model's variant."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .model_executor.checkpoint import ModelVariant
from .model_executor.step_io import RequestSpec

MAX_FRAMES = 33 * 1000  # about 23 minutes at 24 fps: long videos are the point, runaway ones are not
MAX_STEPS = 1000


@dataclass(frozen=True)
class VideoSamplingParams:
    """Settings of one video; None means the model variant's official default.

    Sizes are in pixels and must be multiples of 16 (of 64 for the 3-stage pyramid models,
    whose coarsest stage is a quarter of the size).
    """

    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    seed: int = 0
    negative_prompt: str = ""
    guidance_scale: float | None = None
    num_inference_steps: int | None = None
    """Steps of the single-stage Base sampler (or of every pyramid stage, if the list is not given)."""
    pyramid_num_inference_steps_list: tuple[int, ...] | None = None
    image: Any = None
    video: Any = None
    fps: int | None = None
    use_cfg_zero_star: bool | None = None
    use_zero_init: bool = True
    zero_steps: int = 1
    is_amplify_first_chunk: bool | None = None
    is_skip_first_chunk: bool = False
    add_noise_to_image_latents: bool = True
    add_noise_to_video_latents: bool = True
    image_noise_sigma_min: float = 0.111
    image_noise_sigma_max: float = 0.135
    video_noise_sigma_min: float = 0.111
    video_noise_sigma_max: float = 0.135
    decoder: str | None = None
    """'vae' or 'preview'; None uses the VAE when the model has one."""

    def with_updates(self, **changes) -> VideoSamplingParams:
        return replace(self, **changes)

    def stage_steps(self, variant: ModelVariant) -> tuple[int, ...]:
        if self.pyramid_num_inference_steps_list is not None:
            steps = tuple(int(n) for n in self.pyramid_num_inference_steps_list)
            if len(steps) != len(variant.default_steps):
                raise ValueError(
                    f"pyramid_num_inference_steps_list needs {len(variant.default_steps)} entries for this model, "
                    f"got {len(steps)}"
                )
            return steps
        if self.num_inference_steps is not None:
            return (int(self.num_inference_steps),) * len(variant.default_steps)
        return variant.default_steps

    def resolve(self, prompt: str, variant: ModelVariant, has_vae: bool) -> RequestSpec:
        """Fill defaults from the variant and validate; raises ValueError naming the bad field."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        height = self.height if self.height is not None else variant.default_height
        width = self.width if self.width is not None else variant.default_width
        multiple = 16 * 2 ** (variant.sampler.stages - 1)
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % multiple:
                raise ValueError(f"{name} must be a positive multiple of {multiple} for this model, got {value!r}")
        num_frames = self.num_frames if self.num_frames is not None else variant.default_num_frames
        if not isinstance(num_frames, int) or not 1 <= num_frames <= MAX_FRAMES:
            raise ValueError(f"num_frames must be an integer from 1 to {MAX_FRAMES}, got {num_frames!r}")
        steps = self.stage_steps(variant)
        if any(n < 1 or n > MAX_STEPS for n in steps):
            raise ValueError(f"steps per stage must be from 1 to {MAX_STEPS}, got {steps}")
        guidance = self.guidance_scale if self.guidance_scale is not None else variant.default_guidance_scale
        if guidance < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance}")
        if (self.image is not None or self.video is not None) and not has_vae:
            raise ValueError("image and video inputs need a model with a VAE to encode them; this model has none")
        if self.image is not None and self.video is not None:
            raise ValueError("give an image or a video to condition on, not both")
        decoder = self.decoder or ("vae" if has_vae else "preview")
        if decoder not in ("vae", "preview") or (decoder == "vae" and not has_vae):
            raise ValueError(f"decoder must be 'preview'{' or vae' if has_vae else ''} for this model, got {decoder!r}")
        for name in ("image_noise_sigma", "video_noise_sigma"):
            low, high = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            if not 0 <= low <= high <= 1:
                raise ValueError(f"{name}_min/_max must satisfy 0 <= min <= max <= 1, got {low}, {high}")
        if self.seed < 0 or self.seed >= 2**63:
            raise ValueError(f"seed must be from 0 to 2**63 - 1, got {self.seed}")
        amplify = self.is_amplify_first_chunk
        amplify = variant.default_amplify_first_chunk if amplify is None else amplify
        zero_star = variant.is_cfg_zero_star if self.use_cfg_zero_star is None else self.use_cfg_zero_star
        return RequestSpec(
            prompt=prompt,
            negative_prompt=self.negative_prompt or "",
            num_frames=num_frames,
            height=height,
            width=width,
            seed=int(self.seed),
            guidance_scale=float(guidance),
            stage_steps=steps,
            use_cfg_zero_star=bool(zero_star),
            use_zero_init=self.use_zero_init,
            zero_steps=int(self.zero_steps),
            # Only the DMD sampler amplifies the first chunk (the UniPC stages ignore the flag).
            amplify_first_chunk=bool(amplify) and variant.sampler.kind == "dmd",
            skip_first_chunk=self.is_skip_first_chunk,
            image=self.image,
            video=self.video,
            add_noise_to_image_latents=self.add_noise_to_image_latents,
            add_noise_to_video_latents=self.add_noise_to_video_latents,
            image_noise_sigma=(self.image_noise_sigma_min, self.image_noise_sigma_max),
            video_noise_sigma=(self.video_noise_sigma_min, self.video_noise_sigma_max),
            decoder=decoder,
        )

