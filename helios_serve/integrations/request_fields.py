"""Helios request fields as other engines hand them to us, turned into one RequestSpec.

vLLM-Omni and SGLang parse their own HTTP requests; what reaches a pipeline is a loose bag
of values (typed fields plus a free-form dict). The schema in ``sampling_params`` says which
of them our executor reads and how each is checked, so both adapters treat a request the same
way as our own server does.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from ..model_executor.checkpoint import ModelVariant
from ..model_executor.step_io import RequestSpec
from ..sampling_params import VideoSamplingParams


def request_spec(prompt: Any, fields: Mapping[str, Any], variant: ModelVariant, has_vae: bool) -> RequestSpec:
    """Validate and resolve one request; raises ValueError naming the bad field.

    ``fields`` holds the Helios fields an engine received (None means "not given"; fields the
    schema does not know are ignored); a missing seed gets a random one, as in our own server.
    """
    if not isinstance(prompt, str):
        raise ValueError("prompt must be a string")
    params = VideoSamplingParams.from_fields(fields)
    if fields.get("seed") is None:
        params = params.with_updates(seed=random.randrange(2**63))
    conditioning = {name: fields[name] for name in ("image", "video", "video_skipped_frames")
                    if fields.get(name) is not None}
    return params.with_updates(**conditioning).resolve(prompt, variant, has_vae)
