"""HTTP request and response models (pydantic). They never leave the entrypoint layer."""

from __future__ import annotations

import re
import secrets
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from ...jobs.manager import JobManager
from ...jobs.status import JobStatus
from ...jobs.store import JobRecord
from ...sampling_params import (
    EXAMPLE_PROMPT,
    EXTRA_PARAM_FIELDS,
    MAX_FRAMES,
    MAX_PROMPT_CHARS,
    WIRE_FIELDS,
    VideoSamplingParams,
    pydantic_field,
)
from .errors import public_message

SIZE_PATTERN = re.compile(r"^(\d{2,5})x(\d{2,5})$")
DEFAULT_FPS = 24
BASE64_PATTERN = r"^(data:[\w.+-]+/[\w.+-]+;base64,)?[A-Za-z0-9+/]*={0,2}$"
"""A base64 data URL or bare base64 (body.py's decode_base64 reads them): documentation only."""
EXAMPLE_IMAGE = ("data:image/png;base64,"
                 "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR42mM4EaABAAMkAUEj5ExoAAAAAElFTkSuQmCC")
"""A 1x1 PNG: the API reference's example of an image given inline."""
EXAMPLE_VIDEO = "data:video/mp4;base64,AAAAIGZ0eXBpc29tAAACAGlzb21pc28y"
"""The start of an MP4 (its ftyp box): the form of a video given inline (a real one is longer)."""
BODY_ONLY_AS_SIZE = ("height", "width")
"""Schema fields a body gives as ``size`` (OpenAI's WIDTHxHEIGHT) instead."""
# Types whose schema says which values they take, for the reference only: the validators of
# VideoCreateRequest check them (with their own messages).
SizeText = Annotated[str, Field(json_schema_extra={"pattern": SIZE_PATTERN.pattern})]
Base64Text = Annotated[str, Field(json_schema_extra={"pattern": BASE64_PATTERN})]
ExtraParams = Annotated[dict, Field(json_schema_extra={"propertyNames": {"enum": sorted(EXTRA_PARAM_FIELDS)}})]


class _CreateFields(BaseModel):
    """POST /v1/videos fields that are not video settings: OpenAI's, plus scheduling.

    ``examples`` only document (the OpenAPI schema), as do the patterns and keys of SizeText,
    Base64Text and ExtraParams: the validators decide what is accepted."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=20_000, description="what the video shows",
                        examples=[EXAMPLE_PROMPT])
    model: str | None = Field(default=None, description="the served model's name, as GET /v1/models lists it "
                                                        "(optional; another name answers 404)",
                              examples=["helios-distilled"])
    seconds: float | None = Field(default=None, gt=0, le=MAX_FRAMES / 24,
                                  description='length in seconds (OpenAI sends a string such as "4"), at fps; '
                                              "not with num_frames",
                                  examples=[4])
    size: SizeText | None = Field(default=None, examples=["640x384"],
                                  description='WIDTHxHEIGHT in pixels, e.g. "640x384"; each side a multiple of 16 '
                                              "(of 64 for the 3-stage pyramid models)")
    priority: int = Field(default=0, ge=-100, le=100, description="lower runs first (the 'priority' policy)",
                          examples=[0])
    realtime: bool = Field(default=False, description="real-time playback at fps: chunk k is due k * 33 / fps "
                                                      "seconds after the first",
                           examples=[True])
    pace_to_media_time: bool = Field(default=False, description="realtime only: generate at most "
                                     "pacing_lead_seconds ahead of the client's playback (vLLM-Omni's pacing)",
                                     examples=[True])
    pacing_lead_seconds: float = Field(default=2.0, gt=0, le=60, description="paced stream: how far generation may "
                                                                             "run ahead of playback, in seconds",
                                       examples=[2.0])
    pacing_max_lag_seconds: float = Field(default=5.0, gt=0, le=600,
                                          description="paced stream: a chunk later than this restarts the playback "
                                                      "clock from it (the player stalled)",
                                          examples=[5.0])
    keep: bool = Field(default=False, description="live stream (realtime without num_frames or seconds): keep every "
                                                  "segment and build the final MP4 (up to the server's size limit)",
                       examples=[True])
    input_reference: Base64Text | None = Field(default=None, examples=[EXAMPLE_IMAGE],
                                               description="image to start from (image-to-video): a base64 data URL, "
                                                           "or in multipart a file; not with video_reference")
    video_reference: Base64Text | None = Field(default=None, examples=[EXAMPLE_VIDEO],
                                               description="video to continue (video-to-video): a base64 data URL, or "
                                                           "in multipart a file")
    user: str | None = Field(default=None, max_length=256, description="an end-user id, for your records",
                             examples=["user-1234"])
    extra_params: ExtraParams | None = Field(default=None, examples=[{"use_cfg_zero_star": True, "zero_steps": 1}],
                                             description="vLLM-Omni style extras; only the Helios settings marked "
                                                         "for it are accepted (the keys listed), each checked as "
                                                         "the field of that name")


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
        if self.pace_to_media_time and not self.realtime:
            raise ValueError("pace_to_media_time needs realtime: true (a playback to pace to)")
        if self.keep and not self.live:
            raise ValueError("keep is for live streams (realtime without num_frames or seconds); a video of a given "
                             "length always keeps its MP4")
        return self

    @property
    def live(self) -> bool:
        """A live stream: real-time without a length, it runs until deleted, stopped or the server's limit."""
        return self.realtime and self.num_frames is None and self.seconds is None

    def pacing_fields(self) -> dict:
        """The pacing settings a job stores (none unless paced)."""
        if not self.pace_to_media_time:
            return {}
        return {"pace_to_media_time": True, "pacing_lead_seconds": self.pacing_lead_seconds,
                "pacing_max_lag_seconds": self.pacing_max_lag_seconds}

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


class PromptScheduleItem(BaseModel):
    from_chunk: int
    prompt: str
    transition_chunks: int = 0


class VideoPromptRequest(BaseModel):
    """POST /v1/videos/{id}/prompt: the running video follows ``prompt`` from its next chunk not begun."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="what the video shows from then on",
                        examples=["The fox leaps into a snowdrift"])
    transition_chunks: int = Field(default=0, ge=0, le=1000, description="chunks over which the text conditioning "
                                                                          "moves linearly to the new prompt",
                                   examples=[1])


class VideoExtendRequest(BaseModel):
    """POST /v1/videos/{id}/extend: continue a completed video (the new video is the whole video)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_CHARS,
                               description="what the continuation shows (default: the video's last prompt)",
                               examples=["A storm rolls in over the snowy field"])
    seconds: float | None = Field(default=None, gt=0, le=MAX_FRAMES / 24,
                                  description="how much to add, in seconds at the video's fps; not with num_frames",
                                  examples=[4])
    num_frames: int | None = Field(default=None, ge=1, le=MAX_FRAMES, description="how much to add, in frames",
                                   examples=[66])
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1,
                             description="a new seed for the continuation (default: the video's random stream "
                                         "goes on, exactly as in one longer video)",
                             examples=[7])
    transition_chunks: int = Field(default=0, ge=0, le=1000, description="chunks over which the text conditioning "
                                                                          "moves linearly to the new prompt",
                                   examples=[1])

    @model_validator(mode="after")
    def _length(self) -> VideoExtendRequest:
        if (self.seconds is None) == (self.num_frames is None):
            raise ValueError("give seconds or num_frames (how much to add), not both")
        return self


class VideoPromptChanged(BaseModel):
    """The answer to POST /v1/videos/{id}/prompt: the chunk the new prompt applies from."""

    id: str
    object: Literal["video.prompt"] = "video.prompt"
    from_chunk: int
    prompt: str
    transition_chunks: int
    prompt_schedule: list[PromptScheduleItem]


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
    prompt_schedule: list[PromptScheduleItem] | None = None
    """The prompts over time once the video has more than one (given at create, or changed with
    POST /v1/videos/{id}/prompt): create a video with it and the same seed to get the same video."""
    live: bool = False
    """A live stream: num_frames is the server's limit, it runs until deleted or stopped before."""
    end_reason: str | None = None
    """Why a live stream completed: max_stream_seconds or max_kept_stream_mb (the server's limits)."""
    extended_from_video_id: str | None = None
    """For an extension (POST /v1/videos/{id}/extend): the video it continues."""


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
        inference_time_s=timings.get("inference_time_s"), prompt_schedule=record.request.get("prompt_schedule"),
        live=bool(record.request.get("live")), end_reason=record.request.get("end_reason"),
        extended_from_video_id=record.request.get("extended_from"),
    )
