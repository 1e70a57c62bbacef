"""The request fields other engines hand to our executor (helios_serve.integrations.request_fields)."""

from __future__ import annotations

import pytest

from helios_serve.integrations.request_fields import request_spec
from helios_serve.model_executor.checkpoint import official_variant

DISTILLED = official_variant("distilled")


def test_engine_strings_are_coerced_and_unknown_fields_ignored():
    fields = {"num_frames": "66", "height": 64, "width": "64", "seed": "9", "guidance_scale": "2.5",
              "is_amplify_first_chunk": "false", "pyramid_num_inference_steps_list": ["1", 2, 3],
              "lora": "ignored", "num_inference_steps": None}
    spec = request_spec("a fox", fields, DISTILLED, has_vae=True)
    assert (spec.num_frames, spec.height, spec.width, spec.seed) == (66, 64, 64, 9)
    assert spec.guidance_scale == 2.5 and spec.stage_steps == (1, 2, 3)
    assert spec.amplify_first_chunk is False


def test_defaults_come_from_the_variant_and_a_missing_seed_is_random():
    specs = [request_spec("a fox", {"height": 64, "width": 64}, DISTILLED, has_vae=True) for _ in range(2)]
    assert specs[0].stage_steps == DISTILLED.default_steps and specs[0].guidance_scale == 1.0
    assert specs[0].seed != specs[1].seed


@pytest.mark.parametrize("fields, message", [
    ({"seed": 1.5}, "seed has an invalid value"),
    ({"use_zero_init": "maybe"}, "use_zero_init has an invalid value"),
    ({"num_frames": True}, "num_frames has an invalid value"),
    ({"width": 80}, "width must be a positive multiple of 64"),
    ({"pyramid_num_inference_steps_list": 3}, "pyramid_num_inference_steps_list has an invalid value"),
])
def test_bad_fields_name_themselves(fields, message):
    with pytest.raises(ValueError, match=message):
        request_spec("a fox", {"height": 64, "width": 64, **fields}, DISTILLED, has_vae=True)


def test_official_variants_carry_the_published_recipes():
    base, mid = official_variant("base"), official_variant("mid")
    assert (base.default_steps, base.default_guidance_scale, base.sampler.stages) == ((50,), 5.0, 1)
    assert (mid.default_steps, mid.default_guidance_scale, mid.sampler.kind) == ((20, 20, 20), 5.0, "unipc")
    assert (DISTILLED.default_steps, DISTILLED.sampler.kind, DISTILLED.default_amplify_first_chunk) == ((2, 2, 2), "dmd", True)
