"""User-facing generation settings: the one schema of a video's knobs.

Each field of ``VideoSamplingParams`` declares its type, range, help text and whether a
client may send it inside vLLM-Omni's ``extra_params``. Everything else is derived from it:
the HTTP body model (``entrypoints/openai/protocol.py``), the ``generate`` command's flags
(``add_sampling_arguments``), the field coercion for vLLM-Omni and SGLang requests
(``integrations/request_fields.py``) and the settings stored with a job (``to_fields``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

from .errors import InvalidRequestError
from .model_executor.checkpoint import ModelVariant
from .model_executor.step_io import PromptSwitch, RequestSpec

MAX_FRAMES = 33 * 1000  # about 23 minutes at 24 fps: long videos are the point, runaway ones are not
MAX_STEPS = 1000
MAX_SIDE = 8192
MAX_PROMPT_CHARS = 20_000
MAX_SCHEDULE_ENTRIES = 256
EXAMPLE_PROMPT = "A red fox trots through fresh snow at sunrise, its breath steaming in the cold air"
"""The prompt of the API reference's examples (a prompt schedule's first entry must repeat it)."""


class PromptScheduleEntry(BaseModel):
    """One entry of a prompt schedule: from chunk ``from_chunk`` on, ``prompt``."""

    model_config = ConfigDict(extra="forbid")

    from_chunk: int = Field(ge=0, le=MAX_FRAMES // 33, description="the first chunk that follows this prompt")
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="what the video shows from then on")
    transition_chunks: int = Field(0, ge=0, le=1000, description="chunks over which the text conditioning moves "
                                                                 "linearly from the previous prompt to this one")


PromptSchedule = Annotated[list[PromptScheduleEntry], Field(min_length=1, max_length=MAX_SCHEDULE_ENTRIES)]


def knob(default, help: str, kind: Any = None, low=None, high=None, extra: bool = False, choices: tuple = (),
         flag: str | None = None, example: Any = None):
    """A setting of the schema. ``kind`` is its wire type (int, float, bool, str, or
    ``tuple[int, ...]``; None for values no wire format carries, the conditioning arrays);
    ``low``/``high`` bound it (each element of a tuple); ``extra`` lets it arrive inside
    ``extra_params``; ``flag`` names its ``generate`` option when that differs from the field;
    ``example`` is a valid value the API reference (OpenAPI) shows."""
    return dataclasses.field(default=default, metadata=dict(help=help, kind=kind, low=low, high=high, extra=extra,
                                                            choices=choices, flag=flag, example=example))


@dataclass(frozen=True)
class VideoSamplingParams:
    """Settings of one video; None means the model variant's official default."""

    num_frames: int | None = knob(None, "frames to generate, 33 per chunk (the last chunk is trimmed to 4n+1)",
                                  int, 1, MAX_FRAMES, example=99)
    height: int | None = knob(None, "height in pixels, a multiple of 16 (of 64 for the 3-stage pyramid models)",
                              int, 16, MAX_SIDE, example=384)
    width: int | None = knob(None, "width in pixels, a multiple of 16 (of 64 for the 3-stage pyramid models)",
                             int, 16, MAX_SIDE, example=640)
    seed: int = knob(0, "random seed: the same seed and settings give the same video", int, 0, 2**63 - 1,
                     example=42)
    negative_prompt: str = knob("", "what to steer away from (with guidance > 1)", str, high=20_000,
                                 example="blurry, low quality, distorted, static")
    guidance_scale: float | None = knob(None, "classifier-free guidance scale; 1 runs no unconditional row",
                                        float, 0, 50, example=5.0)
    num_inference_steps: int | None = knob(
        None, "steps of the single-stage sampler, or of every pyramid stage when no list is given",
        int, 1, MAX_STEPS, flag="--steps", example=30)
    pyramid_num_inference_steps_list: tuple[int, ...] | None = knob(
        None, "steps per pyramid stage, one entry per stage (comma-separated on the command line)",
        tuple[int, ...], 1, MAX_STEPS, extra=True, flag="--pyramid-steps", example=[2, 2, 2])
    image: Any = knob(None, "uint8 [H, W, 3] image to start from (image-to-video)")
    video: Any = knob(None, "uint8 [T, H, W, 3] video to continue (video-to-video), at least 33 frames")
    video_skipped_frames: int = knob(
        0, "frames between the video's first frame and the rest that its reader did not decode "
           "(video_io.read_video_tail keeps only what the model uses)")
    prompt_schedule: tuple[PromptSwitch, ...] | None = knob(
        None, "prompts over time, a list of {from_chunk, prompt, transition_chunks} ordered by chunk: the first "
              "entry (from chunk 0) is the request's prompt; from chunk k a later entry's prompt is followed, "
              "blended in linearly over transition_chunks chunks", PromptSchedule,
        example=[{"from_chunk": 0, "prompt": EXAMPLE_PROMPT},
                 {"from_chunk": 2, "prompt": "The fox leaps into a snowdrift", "transition_chunks": 1}])
    fps: int | None = knob(None, "frame rate of the output video (and of a real-time stream)", int, 1, 120,
                            example=24)
    use_cfg_zero_star: bool | None = knob(None, "CFG-Zero* guidance (the Mid model's recipe)", bool, extra=True,
                                           example=True)
    use_zero_init: bool = knob(True, "CFG-Zero*: zero the velocity of the first steps", bool, extra=True,
                               example=True)
    zero_steps: int = knob(1, "CFG-Zero*: how many first steps are zeroed", int, 0, MAX_STEPS, extra=True,
                           example=1)
    is_amplify_first_chunk: bool | None = knob(None, "DMD: double the first chunk's steps", bool, extra=True,
                                                example=True)
    is_skip_first_chunk: bool = knob(False, "drop the first chunk from the output", bool, extra=True,
                                     example=False)
    add_noise_to_image_latents: bool = knob(True, "noise the image latents of the history", bool, extra=True,
                                            example=True)
    add_noise_to_video_latents: bool = knob(True, "noise the video latents of the history", bool, extra=True,
                                            example=True)
    image_noise_sigma_min: float = knob(0.111, "lowest sigma of the image history noise", float, 0, 1, extra=True,
                                        example=0.111)
    image_noise_sigma_max: float = knob(0.135, "highest sigma of the image history noise", float, 0, 1, extra=True,
                                        example=0.135)
    video_noise_sigma_min: float = knob(0.111, "lowest sigma of the video history noise", float, 0, 1, extra=True,
                                        example=0.111)
    video_noise_sigma_max: float = knob(0.135, "highest sigma of the video history noise", float, 0, 1, extra=True,
                                        example=0.135)
    decoder: str | None = knob(None, "latent decoder (default: the VAE when the model has one, else preview)",
                               str, choices=("vae", "preview"), example="vae")

    def with_updates(self, **changes) -> VideoSamplingParams:
        return replace(self, **changes)

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> VideoSamplingParams:
        """The wire fields in ``fields`` coerced to their types (strings as engines send them;
        others are ignored); raises InvalidRequestError (a ValueError) naming the first that
        cannot be. Ranges are checked by ``resolve`` (``check_ranges``)."""
        given = {name: fields[name] for name in WIRE_FIELDS if fields.get(name) is not None}
        try:
            checked = sampling_fields_model().model_validate(given)
        except ValidationError as exc:
            first = exc.errors()[0]
            name = ".".join(str(part) for part in first["loc"][:1])
            raise InvalidRequestError(f"{name} has an invalid value: {given.get(name)!r} ({first['msg']})",
                                      name) from None
        values = checked.model_dump(exclude_none=True)
        if "prompt_schedule" in values:
            values["prompt_schedule"] = tuple(PromptSwitch(**entry) for entry in values["prompt_schedule"])
        return cls(**values)

    def to_fields(self) -> dict[str, Any]:
        """The wire fields that are set, JSON-ready: a job's stored settings (``from_fields`` reads them back)."""
        values = {name: getattr(self, name) for name in WIRE_FIELDS if getattr(self, name) is not None}
        if "prompt_schedule" in values:
            values["prompt_schedule"] = [dataclasses.asdict(entry) for entry in values["prompt_schedule"]]
        return {name: list(value) if isinstance(value, tuple) else value for name, value in values.items()}

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

    def check_ranges(self) -> None:
        """Every wire field within its declared range; ValueError names the first that is not."""
        for name in WIRE_FIELDS:
            value, meta = getattr(self, name), FIELDS[name].metadata
            if value is None or name == "prompt_schedule":  # its entries are checked as they are parsed
                continue
            if meta["choices"] and value not in meta["choices"]:
                raise InvalidRequestError(f"{name} must be one of {', '.join(meta['choices'])}, got {value!r}", name)
            for item in (value if isinstance(value, (tuple, list)) else (value,)):
                measure = len(item) if isinstance(item, str) else item
                low = 0 if isinstance(item, str) else meta["low"]
                if (low is not None and measure < low) or (meta["high"] is not None and measure > meta["high"]):
                    unit = " characters" if isinstance(item, str) else ""
                    raise InvalidRequestError(f"{name} must be from {low} to {meta['high']}{unit}, got {value!r}", name)

    def resolve(self, prompt: str, variant: ModelVariant, has_vae: bool) -> RequestSpec:
        """Fill defaults from the variant and validate; raises ValueError naming the bad field."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        self.check_ranges()
        height = self.height if self.height is not None else variant.default_height
        width = self.width if self.width is not None else variant.default_width
        multiple = 16 * 2 ** (variant.sampler.stages - 1)
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % multiple:
                raise ValueError(f"{name} must be a positive multiple of {multiple} for this model, got {value!r}")
        num_frames = self.num_frames if self.num_frames is not None else variant.default_num_frames
        steps = self.stage_steps(variant)
        guidance = self.guidance_scale if self.guidance_scale is not None else variant.default_guidance_scale
        if (self.image is not None or self.video is not None) and not has_vae:
            raise ValueError("image and video inputs need a model with a VAE to encode them; this model has none")
        if self.image is not None and self.video is not None:
            raise ValueError("give an image or a video to condition on, not both")
        switches = self.prompt_switches(prompt, num_frames)
        decoder = self.decoder or ("vae" if has_vae else "preview")
        if decoder == "vae" and not has_vae:
            raise ValueError(f"decoder must be 'preview' for this model (it has no VAE), got {decoder!r}")
        for name in ("image_noise_sigma", "video_noise_sigma"):
            low, high = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            if low > high:
                raise ValueError(f"{name}_min/_max must satisfy min <= max, got {low}, {high}")
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
            video_skipped_frames=self.video_skipped_frames,
            add_noise_to_image_latents=self.add_noise_to_image_latents,
            add_noise_to_video_latents=self.add_noise_to_video_latents,
            image_noise_sigma=(self.image_noise_sigma_min, self.image_noise_sigma_max),
            video_noise_sigma=(self.video_noise_sigma_min, self.video_noise_sigma_max),
            decoder=decoder,
            prompt_switches=switches,
        )

    def prompt_switches(self, prompt: str, num_frames: int) -> tuple[PromptSwitch, ...]:
        """The schedule's entries after its first, checked against the prompt and the video's chunks."""
        schedule = self.prompt_schedule
        if not schedule:
            return ()
        if schedule[0].from_chunk != 0 or schedule[0].prompt != prompt:
            raise InvalidRequestError("prompt_schedule must start with the request's prompt from chunk 0",
                                      "prompt_schedule")
        num_chunks = max(1, -(-num_frames // 33))
        for before, entry in zip(schedule, schedule[1:]):
            if entry.from_chunk <= before.from_chunk:
                raise InvalidRequestError("prompt_schedule entries must be in increasing from_chunk order, got "
                                          f"{before.from_chunk} then {entry.from_chunk}", "prompt_schedule")
        if schedule[-1].from_chunk >= num_chunks:
            raise InvalidRequestError(f"prompt_schedule switches at chunk {schedule[-1].from_chunk}, but the video "
                                      f"has {num_chunks} chunks (0 to {num_chunks - 1})", "prompt_schedule")
        return tuple(schedule[1:])


FIELDS = {item.name: item for item in dataclasses.fields(VideoSamplingParams)}
WIRE_FIELDS = tuple(name for name, item in FIELDS.items() if item.metadata["kind"] is not None)
"""Fields a request can carry as plain values (all but the conditioning arrays)."""
EXTRA_PARAM_FIELDS = frozenset(name for name, item in FIELDS.items() if item.metadata["extra"])
"""Fields a vLLM-Omni client may send inside ``extra_params``."""


def _not_bool(value):
    """JSON's true is not the number 1: a bool where a number belongs is a client mistake."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


def pydantic_field(name: str, ranges: bool = True):
    """(annotation, FieldInfo) of a wire field for a pydantic model: optional, with the schema's
    type, choices, help text and (``ranges``) range. The HTTP body checks ranges as it parses;
    ``from_fields`` only coerces, leaving ranges to ``check_ranges``."""
    meta = FIELDS[name].metadata
    kind = meta["kind"]
    low, high = (meta["low"], meta["high"]) if ranges else (None, None)
    if kind is PromptSchedule:
        value = PromptSchedule
    elif meta["choices"]:
        value = Literal[meta["choices"]]
    elif kind is str:
        value = Annotated[str, Field(max_length=high)]
    elif kind is bool:
        value = bool
    else:
        number = int if kind in (int, tuple[int, ...]) else float
        value = Annotated[number, Field(ge=low, le=high, allow_inf_nan=False), BeforeValidator(_not_bool)]
        if kind == tuple[int, ...]:
            value = Annotated[tuple[value, ...], Field(min_length=1, max_length=8)]
    examples = [meta["example"]] if meta["example"] is not None else None
    return value | None, Field(None, description=meta["help"], examples=examples)


@cache
def sampling_fields_model() -> type[BaseModel]:
    """A pydantic model of every wire field (all optional, unbounded): lax coercion of strings as engines send them."""
    fields = {name: pydantic_field(name, ranges=False) for name in WIRE_FIELDS}
    return create_model("SamplingFields", __config__=ConfigDict(extra="ignore"), **fields)


def add_sampling_arguments(parser) -> None:
    """One command-line option per wire field (``--num-frames``, ``--steps``, ...), with its help."""
    from .config import help_with_default

    for name in WIRE_FIELDS:
        meta = FIELDS[name].metadata
        flag = meta["flag"] or "--" + name.replace("_", "-")
        help_text = help_with_default(meta["help"], FIELDS[name].default, none_means="the model's")
        # Values are checked by from_fields, as any request's are (a bad one names its field).
        if meta["kind"] is bool:
            parser.add_argument(flag, dest=name, default=None, metavar="true|false", help=help_text)
        elif meta["kind"] == tuple[int, ...]:
            parser.add_argument(flag, dest=name, default=None, type=_comma_list, metavar="N,N,...", help=help_text)
        elif meta["kind"] is PromptSchedule:
            parser.add_argument(flag, dest=name, default=None, type=_json_value, metavar="JSON", help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, type=meta["kind"], choices=meta["choices"] or None,
                                metavar=None if meta["choices"] else name.upper(), help=help_text)


def _json_value(text: str):
    import argparse
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",")]


def sampling_params_from_args(args) -> VideoSamplingParams:
    """The flags ``add_sampling_arguments`` added, checked like any other request's fields."""
    return VideoSamplingParams.from_fields({name: getattr(args, name, None) for name in WIRE_FIELDS})
