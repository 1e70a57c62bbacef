"""HTTP request and response models (pydantic). They never leave the entrypoint layer."""

from __future__ import annotations

import re
import secrets
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from ...jobs.manager import JobManager
from ...jobs.status import JobStatus
from ...jobs.store import JobRecord
from ...sampling_params import EXTRA_PARAM_FIELDS, MAX_FRAMES, WIRE_FIELDS, VideoSamplingParams, pydantic_field
from .errors import public_message

SIZE_PATTERN = re.compile(r"^(\d{2,5})x(\d{2,5})$")
DEFAULT_FPS = 24
BODY_ONLY_AS_SIZE = ("height", "width")
"""Schema fields a body gives as ``size`` (OpenAI's WIDTHxHEIGHT) instead."""


class _CreateFields(BaseModel):
    """POST /v1/videos fields that are not video settings: OpenAI's, plus scheduling."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=20_000, description="what the video shows")
    model: str | None = Field(default=None, description="the served model's name (optional)")
    seconds: float | None = Field(default=None, gt=0, le=MAX_FRAMES / 24,
                                  description='length in seconds (OpenAI sends a string such as "4"), at fps')
    size: str | None = Field(default=None, description='WIDTHxHEIGHT in pixels, e.g. "640x384"')
    priority: int = Field(default=0, ge=-100, le=100, description="lower runs first (the 'priority' policy)")
    realtime: bool = Field(default=False, description="real-time playback at fps: chunk k is due k * 33 / fps "
                                                      "seconds after the first")
    input_reference: str | None = Field(default=None, description="image to start from (image-to-video): an "
                                                                   "upload in multipart, a base64 data URL in JSON")
    video_reference: str | None = Field(default=None, description="video to continue (video-to-video): an "
                                                                  "upload in multipart, a base64 data URL in JSON")
    user: str | None = Field(default=None, max_length=256, description="an end-user id, for your records")
    extra_params: dict | None = Field(default=None, description="vLLM-Omni style extras; only the Helios "
                                                                "settings marked for it are accepted")


_SETTINGS = {name: pydantic_field(name) for name in WIRE_FIELDS if name not in BODY_ONLY_AS_SIZE}


class VideoCreateRequest(create_model("_VideoCreateBody", __base__=_CreateFields, **_SETTINGS)):
    """POST /v1/videos: OpenAI's fields plus every Helios setting of ``VideoSamplingParams``
    (derived from that schema). Unknown fields are rejected by name."""

    @field_validator("size")
    @classmethod
    def _size_format(cls, value: str | None) -> str | None:
        if value is not None and not SIZE_PATTERN.match(value):
            raise ValueError("size must look like 640x384 (WIDTHxHEIGHT)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _extras(cls, data):
        """``extra_params`` keys are checked as the top-level fields of the same name would be."""
        if not isinstance(data, dict) or not isinstance(data.get("extra_params"), dict):
            return data
        merged = dict(data)
        for key, value in data["extra_params"].items():
            if key not in EXTRA_PARAM_FIELDS:
                raise ValueError(f"extra_params.{key} is not a Helios sampling setting")
            if merged.get(key) is None:
                merged[key] = value
        return merged

    @model_validator(mode="after")
    def _conflicts(self) -> VideoCreateRequest:
        if self.seconds is not None and self.num_frames is not None:
            raise ValueError("give seconds or num_frames, not both")
        if self.input_reference is not None and self.video_reference is not None:
            raise ValueError("give input_reference (an image) or video_reference, not both")
        return self

    def sampling_params(self) -> VideoSamplingParams:
        """The video's settings: ``size`` and ``seconds`` become pixels and frames at ``fps``.
        Without a seed each job gets its own, recorded with the job: reported back, and a
        resumed job continues with the same one."""
        given = self.model_dump(include=set(WIRE_FIELDS), exclude_none=True)
        given.setdefault("seed", secrets.randbelow(2**31))
        fps = self.fps or DEFAULT_FPS
        if self.seconds is not None:
            given["num_frames"] = max(1, round(self.seconds * fps))
        if self.size is not None:
            width, height = SIZE_PATTERN.match(self.size).groups()
            given.update(width=int(width), height=int(height))
        return VideoSamplingParams.from_fields({**given, "fps": fps})


class VideoError(BaseModel):
    code: str
    message: str


class VideoObject(BaseModel):
    """The job object (OpenAI's Video plus Helios's progress and timing fields)."""

    id: str
    object: Literal["video"] = "video"
    model: str
    status: JobStatus
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


def video_object(jobs: JobManager, record: JobRecord) -> VideoObject:
    """The job as the API shows it; while the engine runs it, status and progress are live."""
    status, progress = jobs.current(record)
    error = VideoError(code=record.error_code, message=public_message(record.error_message or "")) \
        if record.error_code else None
    timings = record.timings
    return VideoObject(
        id=record.id, model=record.model, status=status, progress=progress, created_at=record.created_at,
        completed_at=record.completed_at, expires_at=record.expires_at,
        seconds=f"{record.num_frames / record.fps:g}", size=f"{record.width}x{record.height}",
        prompt=record.prompt, error=error, num_frames=record.num_frames, fps=record.fps,
        seed=record.request.get("seed"), chunks_completed=record.chunks_completed, total_chunks=record.total_chunks,
        queue_time_s=timings.get("queue_time_s"), time_to_first_chunk_s=timings.get("time_to_first_chunk_s"),
        inference_time_s=timings.get("inference_time_s"),
    )
