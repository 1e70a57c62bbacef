"""Our Helios executor as an SGLang Diffusion pipeline.

SGLang picks a pipeline class by ``model_index.json["_class_name"]`` and its sampling
defaults by the first matching model detector. We register one pipeline class per Helios
pipeline name (replacing SGLang's built-in Helios) and one sampling-defaults class per
variant, so a Distilled checkpoint gets the Distilled recipe whatever its folder is called.

The pipeline has a single stage: SGLang hands it one request (``Req``) at a time and gets the
whole video back; inside, the chunks run on our ModelRunner's units, and every denoising
step reports progress to SGLang.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from sglang.multimodal_gen.configs.pipeline_configs.helios import HeliosT2VConfig
from sglang.multimodal_gen.configs.sample.sampling_params import SamplingParams
from sglang.multimodal_gen.configs.task_type import ModelTaskType
from sglang.multimodal_gen.runtime.distributed.group_coordinator import get_local_torch_device
from sglang.multimodal_gen.runtime.pipelines_core.composed_pipeline_base import ComposedPipelineBase
from sglang.multimodal_gen.runtime.pipelines_core.schedule_batch import OutputBatch, Req
from sglang.multimodal_gen.runtime.pipelines_core.stages.base import PipelineStage

from ...model_executor.checkpoint import official_variant, read_variant
from ...model_executor.model_runner import ModelRunner, RunnerConfig
from ...video_io import read_image, read_video_tail
from ..request_fields import request_spec

VARIANTS = ("base", "mid", "distilled")


def checkpoint_variant(path: str) -> str | None:
    """The variant of a local diffusers-format Helios checkpoint, or None if it is not one."""
    try:
        return read_variant(Path(path)).name
    except (OSError, ValueError):
        return None


def _sampling_params_class(name: str) -> type[SamplingParams]:
    """SGLang sampling defaults with a variant's official recipe (the steps per stage come
    from the checkpoint unless a request gives them)."""
    variant = official_variant(name)
    fields = [
        ("height", int | None, variant.default_height),
        ("width", int | None, variant.default_width),
        ("num_frames", int, variant.default_num_frames),
        ("fps", int, variant.default_fps),
        ("guidance_scale", float, variant.default_guidance_scale),
        ("negative_prompt", str, ""),
        ("num_inference_steps", int | None, None),
    ]
    class_name = f"HeliosServe{name.title()}SamplingParams"
    return dataclasses.make_dataclass(class_name, fields, bases=(SamplingParams,), namespace={"__module__": __name__})


SAMPLING_PARAMS = {name: _sampling_params_class(name) for name in VARIANTS}
# Module attributes, so the classes pickle by name between SGLang's processes.
globals().update({cls.__name__: cls for cls in SAMPLING_PARAMS.values()})


class HeliosServeConfig(HeliosT2VConfig):
    """SGLang's Helios pipeline settings; ours reads none of them but the task types: text-,
    image- and video-to-video (SGLang picks one per request from its inputs)."""

    supported_task_types: ClassVar[tuple[ModelTaskType, ...]] = (ModelTaskType.T2V, ModelTaskType.I2V, ModelTaskType.V2V)


class HeliosServeStage(PipelineStage):
    """One request, start to finish, on our executor."""

    def __init__(self, runner: ModelRunner):
        super().__init__()
        self.runner = runner

    @torch.inference_mode()
    def forward(self, batch: Req, server_args) -> OutputBatch:
        runner = self.runner
        spec = request_spec(batch.prompt, self._fields(batch.sampling_params), runner.variant, runner.vae is not None)
        with self.progress_bar(total=spec.num_forwards, batch=batch) as progress:
            chunks = runner.generate(batch.request_id or "", spec, on_step=lambda: progress.update(1))
            frames = [chunk.frames for chunk in chunks]
        video = np.concatenate(frames)[None]  # uint8 [1, T, H, W, 3]: SGLang saves uint8 frames as they are
        return OutputBatch(output=video, metrics=batch.metrics)

    @staticmethod
    def _fields(sampling: SamplingParams) -> dict[str, Any]:
        fields = dict(sampling.diffusers_kwargs or {})  # Helios extras, e.g. pyramid_num_inference_steps_list
        for name in ("negative_prompt", "num_frames", "height", "width", "seed", "guidance_scale", "num_inference_steps"):
            fields[name] = _first(getattr(sampling, name, None))
        image, video = _first(sampling.image_path), _first(sampling.video_path)
        # Inputs are bounded before they are decoded, read at the output's size when it is known
        # (else the model resizes them), and only the video frames the model uses are kept.
        width, height = fields["width"], fields["height"]
        size = (width, height) if isinstance(width, int) and isinstance(height, int) and min(width, height) > 0 else None
        if image:
            fields["image"] = read_image(image, size=size)
        if video:
            fields["video"], fields["video_skipped_frames"] = read_video_tail(video, size=size)
        return fields


def _first(value):
    """SGLang allows lists (for batched prompts); one video per request here."""
    return value[0] if isinstance(value, list) and value else value


class HeliosServePipeline(ComposedPipelineBase):
    pipeline_name = "HeliosPipeline"
    _required_config_modules: list[str] = []

    def load_modules(self, server_args, loaded_modules=None) -> dict[str, Any]:
        """Our loader reads the checkpoint (SGLang's per-component loaders are not used)."""
        device = str(get_local_torch_device())
        runner = ModelRunner(RunnerConfig(model=os.fspath(self.model_path), device=device))
        return {"helios_runner": runner}

    def create_pipeline_stages(self, server_args) -> None:
        self.add_stage(HeliosServeStage(self.modules["helios_runner"]), "helios_serve")


class HeliosServePyramidPipeline(HeliosServePipeline):
    pipeline_name = "HeliosPyramidPipeline"
