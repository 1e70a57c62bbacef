"""HTTP request and response models (pydantic). They never leave the entrypoint layer."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ...sampling_params import MAX_FRAMES, MAX_STEPS

SIZE_PATTERN = re.compile(r"^(\d{2,5})x(\d{2,5})$")
# Settings a vLLM-Omni client may send inside ``extra_params``.
EXTRA_PARAM_FIELDS = {
    "pyramid_num_inference_steps_list", "is_amplify_first_chunk", "use_cfg_zero_star", "use_zero_init",
    "zero_steps", "is_skip_first_chunk", "add_noise_to_image_latents", "add_noise_to_video_latents",
    "image_noise_sigma_min", "image_noise_sigma_max", "video_noise_sigma_min", "video_noise_sigma_max",
}


class VideoCreateRequest(BaseModel):
    """POST /v1/videos: OpenAI's fields plus Helios's. Unknown fields are rejected by name."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=20_000)
    model: str | None = None
    seconds: float | None = Field(default=None, gt=0, le=MAX_FRAMES / 24)
    """Length in seconds (OpenAI sends a string such as "4"); converted with ``fps``."""
    size: str | None = None
    """WIDTHxHEIGHT in pixels, e.g. "640x384"."""
    num_frames: int | None = Field(default=None, ge=1, le=MAX_FRAMES)
    fps: int | None = Field(default=None, ge=1, le=120)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    negative_prompt: str | None = Field(default=None, max_length=20_000)
    guidance_scale: float | None = Field(default=None, ge=0, le=50)
    num_inference_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    pyramid_num_inference_steps_list: list[int] | None = Field(default=None, min_length=1, max_length=8)
    is_amplify_first_chunk: bool | None = None
    use_cfg_zero_star: bool | None = None
    use_zero_init: bool | None = None
    zero_steps: int | None = Field(default=None, ge=0, le=MAX_STEPS)
    is_skip_first_chunk: bool | None = None
    add_noise_to_image_latents: bool | None = None
    add_noise_to_video_latents: bool | None = None
    image_noise_sigma_min: float | None = Field(default=None, ge=0, le=1)
    image_noise_sigma_max: float | None = Field(default=None, ge=0, le=1)
    video_noise_sigma_min: float | None = Field(default=None, ge=0, le=1)
    video_noise_sigma_max: float | None = Field(default=None, ge=0, le=1)
    decoder: Literal["vae", "preview"] | None = None
    priority: int = Field(default=0, ge=-100, le=100)
    """Lower runs first (the server's 'priority' policy)."""
    realtime: bool = False
    """Ask for real-time playback at ``fps``: chunk k is due k * 33 / fps s after the first."""
    input_reference: str | None = None
    """Image to start from (image-to-video): an upload in multipart, a base64 data URL in JSON."""
    video_reference: str | None = None
    """Video to continue (video-to-video): an upload in multipart, a base64 data URL in JSON."""
    user: str | None = Field(default=None, max_length=256)
    extra_params: dict | None = None
    """vLLM-Omni style extras; only Helios sampling keys are accepted."""

    @field_validator("size")
    @classmethod
    def _size_format(cls, value: str | None) -> str | None:
        if value is not None and not SIZE_PATTERN.match(value):
            raise ValueError("size must look like 640x384 (WIDTHxHEIGHT)")
        return value

    @field_validator("pyramid_num_inference_steps_list")
    @classmethod
    def _steps_range(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(n < 1 or n > MAX_STEPS for n in value):
            raise ValueError(f"every stage needs 1 to {MAX_STEPS} steps")
        return value

    @model_validator(mode="after")
    def _extras_and_conflicts(self) -> VideoCreateRequest:
        for key, value in (self.extra_params or {}).items():
            if key not in EXTRA_PARAM_FIELDS:
                raise ValueError(f"extra_params.{key} is not a Helios sampling setting")
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.seconds is not None and self.num_frames is not None:
            raise ValueError("give seconds or num_frames, not both")
        if self.input_reference is not None and self.video_reference is not None:
            raise ValueError("give input_reference (an image) or video_reference, not both")
        return self

    @property
    def width_height(self) -> tuple[int, int] | tuple[None, None]:
        if self.size is None:
            return None, None
        width, height = SIZE_PATTERN.match(self.size).groups()
        return int(width), int(height)


class VideoError(BaseModel):
    code: str
    message: str


class VideoObject(BaseModel):
    """The job object (OpenAI's Video plus Helios's progress and timing fields)."""

    id: str
    object: Literal["video"] = "video"
    model: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int = Field(ge=0, le=100)
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    seconds: str
    size: str
    prompt: str
    error: VideoError | None = None
    remixed_from_video_id: str | None = None
    num_frames: int
    fps: int
    seed: int | None = None
    """The seed used (a random one when the request gave none): reuse it to get the same video."""
    chunks_completed: int
    total_chunks: int
    queue_time_s: float | None = None
    time_to_first_chunk_s: float | None = None
    inference_time_s: float | None = None


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VideoObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "helios-serve"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
