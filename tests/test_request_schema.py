"""One schema of a video's settings (VideoSamplingParams), and what is derived from it: the HTTP
body, extra_params, the generate flags, engine field coercion and a job's stored settings."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest
from pydantic import ValidationError

from helios_serve.entrypoints.openai.protocol import VideoCreateRequest, VideoObject
from helios_serve.errors import InvalidRequestError
from helios_serve.jobs.status import JobStatus
from helios_serve.sampling_params import (
    EXTRA_PARAM_FIELDS, FIELDS, WIRE_FIELDS, VideoSamplingParams, add_sampling_arguments, sampling_params_from_args,
)


def test_every_setting_declares_its_help_and_type():
    for name, item in FIELDS.items():
        assert item.metadata["help"], name
        if name not in ("image", "video", "video_skipped_frames"):  # the conditioning arrays, set by readers
            assert name in WIRE_FIELDS and item.metadata["kind"] is not None, name


def test_the_http_body_has_every_setting_with_its_range_and_help():
    schema = VideoCreateRequest.model_json_schema()["properties"]
    for name in WIRE_FIELDS:
        if name in ("height", "width"):  # the body says size=WIDTHxHEIGHT
            continue
        assert schema[name]["description"] == FIELDS[name].metadata["help"], name
    steps = [s for s in schema["num_inference_steps"]["anyOf"] if s.get("type") == "integer"][0]
    assert (steps["minimum"], steps["maximum"]) == (FIELDS["num_inference_steps"].metadata["low"],
                                                    FIELDS["num_inference_steps"].metadata["high"])


def test_status_has_one_vocabulary():
    schema = VideoObject.model_json_schema()
    status = schema["$defs"]["JobStatus"]["enum"]
    assert status == [s.value for s in JobStatus] == ["queued", "in_progress", "completed", "failed"]


@pytest.mark.parametrize("extras", [
    {"zero_steps": math.inf}, {"zero_steps": -1}, {"zero_steps": 1.5}, {"image_noise_sigma_min": "Infinity"},
    {"pyramid_num_inference_steps_list": 3}, {"pyramid_num_inference_steps_list": [0, 1, 1]},
    {"pyramid_num_inference_steps_list": [1.5, 1, 1]}, {"use_zero_init": [True]}, {"zero_steps": True},
])
def test_extra_params_are_checked_like_top_level_fields(extras):
    with pytest.raises(ValidationError) as caught:
        VideoCreateRequest.model_validate({"prompt": "a fox", "extra_params": extras})
    assert next(iter(extras)) in str(caught.value)


def test_extra_params_accept_exactly_the_marked_settings():
    body = VideoCreateRequest.model_validate({"prompt": "a fox", "extra_params": {
        "pyramid_num_inference_steps_list": ["1", 2, 3], "use_zero_init": "false"}})
    assert body.pyramid_num_inference_steps_list == (1, 2, 3) and body.use_zero_init is False
    assert "num_frames" not in EXTRA_PARAM_FIELDS
    with pytest.raises(ValidationError, match="extra_params.num_frames"):
        VideoCreateRequest.model_validate({"prompt": "a fox", "extra_params": {"num_frames": 33}})


def test_body_settings_become_sampling_params_that_round_trip_through_storage():
    body = VideoCreateRequest.model_validate({"prompt": "a fox", "size": "128x64", "seconds": 2, "fps": 12,
                                              "seed": 7, "guidance_scale": 2.5, "decoder": "preview"})
    params = body.sampling_params()
    assert (params.width, params.height, params.num_frames, params.fps, params.seed) == (128, 64, 24, 12, 7)
    stored = params.to_fields()
    assert VideoSamplingParams.from_fields(stored) == params
    assert set(stored) <= set(WIRE_FIELDS)


def test_a_body_without_a_seed_gets_its_own():
    seeds = {VideoCreateRequest.model_validate({"prompt": "x"}).sampling_params().seed for _ in range(3)}
    assert len(seeds) == 3


def test_from_fields_names_the_bad_field():
    with pytest.raises(InvalidRequestError, match="num_frames has an invalid value"):
        VideoSamplingParams.from_fields({"num_frames": "many"})
    with pytest.raises(InvalidRequestError, match="guidance_scale must be from 0 to 50") as caught:
        VideoSamplingParams.from_fields({"guidance_scale": "99"}).check_ranges()
    assert caught.value.param == "guidance_scale"


def test_python_api_gets_the_same_ranges():
    for params, field in ((VideoSamplingParams(fps=0), "fps"), (VideoSamplingParams(zero_steps=-1), "zero_steps"),
                          (VideoSamplingParams(negative_prompt="x" * 20_001), "negative_prompt"),
                          (VideoSamplingParams(decoder="gif"), "decoder")):
        with pytest.raises(ValueError, match=field):
            params.check_ranges()


def test_generate_has_a_flag_for_every_setting():
    parser = argparse.ArgumentParser()
    add_sampling_arguments(parser)
    dests = {action.dest for action in parser._actions}
    assert set(WIRE_FIELDS) <= dests
    args = parser.parse_args(["--steps", "4", "--pyramid-steps", "1,2,3", "--use-zero-init", "false",
                              "--decoder", "preview", "--image-noise-sigma-max", "0.2"])
    params = sampling_params_from_args(args)
    assert params == dataclasses.replace(VideoSamplingParams(), num_inference_steps=4,
                                         pyramid_num_inference_steps_list=(1, 2, 3), use_zero_init=False,
                                         decoder="preview", image_noise_sigma_max=0.2)
    with pytest.raises(InvalidRequestError, match="use_zero_init"):
        sampling_params_from_args(parser.parse_args(["--use-zero-init", "maybe"]))
