"""Helios request fields as other engines hand them to us, turned into one RequestSpec.

vLLM-Omni and SGLang parse their own HTTP requests; what reaches a pipeline is a loose bag
of values (typed fields plus a free-form dict). This module is the one place that says which
of them our executor reads, so both adapters treat a request the same way.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from ..model_executor.checkpoint import ModelVariant
from ..model_executor.step_io import RequestSpec
from ..sampling_params import VideoSamplingParams

_INT_FIELDS = ("num_frames", "height", "width", "seed", "num_inference_steps", "zero_steps")
_FLOAT_FIELDS = (
    "guidance_scale",
    "image_noise_sigma_min",
    "image_noise_sigma_max",
    "video_noise_sigma_min",
    "video_noise_sigma_max",
)
_BOOL_FIELDS = (
    "use_cfg_zero_star",
    "use_zero_init",
    "is_amplify_first_chunk",
    "is_skip_first_chunk",
    "add_noise_to_image_latents",
    "add_noise_to_video_latents",
)
READ_FIELDS = (
    ("negative_prompt", "pyramid_num_inference_steps_list", "image", "video", "decoder")
    + _INT_FIELDS
    + _FLOAT_FIELDS
    + _BOOL_FIELDS
)
"""Every field our executor reads; anything else an engine passes is ignored."""


def _coerce(name: str, value: Any) -> Any:
    try:
        if name in _INT_FIELDS:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if name in _FLOAT_FIELDS:
            return float(value)
        if name in _BOOL_FIELDS:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                return value.lower() in ("true", "1")
            return bool(value)
        if name == "pyramid_num_inference_steps_list":
            return tuple(int(n) for n in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} has an invalid value: {value!r}") from None
    return value


def request_spec(prompt: Any, fields: Mapping[str, Any], variant: ModelVariant, has_vae: bool) -> RequestSpec:
    """Validate and resolve one request; raises ValueError naming the bad field.

    ``fields`` holds the Helios fields an engine received (None means "not given"); a
    missing seed gets a random one, as in our own server.
    """
    given = {name: _coerce(name, fields[name]) for name in READ_FIELDS if fields.get(name) is not None}
    given.setdefault("seed", random.randrange(2**63))
    if not isinstance(prompt, str):
        raise ValueError("prompt must be a string")
    return VideoSamplingParams(**given).resolve(prompt, variant, has_vae)
