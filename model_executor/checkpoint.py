"""Finding a Helios checkpoint by name and reading which variant it is (spec §1.2, §1.3).

A name is one of: the built-in ``helios-tiny``; an alias (``helios-base``, ``helios-mid``,
``helios-distilled``) for the released Hugging Face repos; a repo id already in the local
Hugging Face cache; or a local directory in diffusers format.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


TINY_MODEL = "helios-tiny"
# Built-in tiny models: the same tiny weights, sampled like Distilled, Mid or Base.
TINY_MODELS = (TINY_MODEL, "helios-tiny-mid", "helios-tiny-base")
# The released 14B architecture with random weights, sampled like Distilled (for GPU speed checks).
RANDOM_MODEL = "helios-distilled-random"
BUILTIN_MODELS = (*TINY_MODELS, RANDOM_MODEL)
MODEL_ALIASES = {
    "helios-base": "BestWishYsh/Helios-Base",
    "helios-mid": "BestWishYsh/Helios-Mid",
    "helios-distilled": "BestWishYsh/Helios-Distilled",
}
PIPELINE_CLASSES = ("HeliosPipeline", "HeliosPyramidPipeline")
SCHEDULER_KINDS = {"HeliosScheduler": None, "HeliosDMDScheduler": "dmd"}


class ModelNotFoundError(ValueError):
    """The model name resolves to nothing; the message says where it looked."""


@dataclass(frozen=True)
class SamplerScheduleConfig:
    """The sampler schedule: the fields of a Helios ``scheduler/scheduler_config.json`` (diffusers
    calls the noise schedule a scheduler; here that word means the request scheduler) that shape
    the timesteps and sigmas."""

    kind: str = "unipc"
    """'unipc' or 'euler' (HeliosScheduler) or 'dmd' (HeliosDMDScheduler)."""
    num_train_timesteps: int = 1000
    shift: float = 1.0
    stages: int = 3
    stage_range: tuple[float, ...] = (0.0, 1 / 3, 2 / 3, 1.0)
    gamma: float = 1 / 3
    use_dynamic_shifting: bool = True
    time_shift_type: str = "exponential"
    solver_order: int = 2
    disable_corrector: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in ("unipc", "euler", "dmd"):
            raise ValueError(f"unsupported scheduler type {self.kind!r}")
        if len(self.stage_range) != self.stages + 1:
            raise ValueError(f"stage_range {self.stage_range} needs stages + 1 = {self.stages + 1} entries")
        if self.use_dynamic_shifting and self.shift != 1.0:
            raise ValueError("use_dynamic_shifting requires shift == 1.0")
        if self.solver_order != 2 and self.kind == "unipc":
            raise ValueError("only solver_order=2 UniPC is supported (the Helios configuration)")


@dataclass(frozen=True)
class ModelVariant:
    """How a checkpoint samples, with the official recipe as defaults (spec §4.6)."""

    name: str
    """'base', 'mid' or 'distilled' (or 'tiny')."""
    sampler: SamplerScheduleConfig
    is_cfg_zero_star: bool
    is_distilled: bool
    default_steps: tuple[int, ...]
    """(n,) for the single-stage Base, one entry per stage for the pyramid variants."""
    default_guidance_scale: float
    default_amplify_first_chunk: bool
    default_height: int = 384
    default_width: int = 640
    default_num_frames: int = 99
    default_fps: int = 24

    @property
    def is_pyramid(self) -> bool:
        return self.sampler.stages > 1


def variant_from_configs(model_index: dict, scheduler_config: dict) -> ModelVariant:
    pipeline = model_index.get("_class_name")
    if pipeline not in PIPELINE_CLASSES:
        raise ValueError(f"model_index.json names pipeline {pipeline!r}; expected one of {PIPELINE_CLASSES}")
    scheduler_class = scheduler_config.get("_class_name", "HeliosScheduler")
    if scheduler_class not in SCHEDULER_KINDS:
        raise ValueError(f"scheduler class {scheduler_class!r} is not a Helios scheduler")
    kind = SCHEDULER_KINDS[scheduler_class] or scheduler_config.get("scheduler_type", "unipc")
    defaults = {"HeliosScheduler": "exponential", "HeliosDMDScheduler": "linear"}[scheduler_class]
    stages = int(scheduler_config.get("stages", 3))
    sampler = SamplerScheduleConfig(
        kind=kind,
        num_train_timesteps=int(scheduler_config.get("num_train_timesteps", 1000)),
        shift=float(scheduler_config.get("shift", 1.0)),
        stages=stages,
        stage_range=tuple(scheduler_config.get("stage_range", (0, 1 / 3, 2 / 3, 1))),
        gamma=float(scheduler_config.get("gamma", 1 / 3)),
        use_dynamic_shifting=bool(scheduler_config.get("use_dynamic_shifting", False)),
        time_shift_type=scheduler_config.get("time_shift_type", defaults),
        disable_corrector=tuple(scheduler_config.get("disable_corrector", ())),
    )
    is_distilled = bool(model_index.get("is_distilled", False)) or kind == "dmd"
    is_cfg_zero_star = bool(model_index.get("is_cfg_zero_star", False))
    if pipeline == "HeliosPipeline" or stages == 1:
        return ModelVariant("base", sampler, False, False, (50,), 5.0, False)
    if is_distilled:
        return ModelVariant("distilled", sampler, is_cfg_zero_star, True, (2,) * stages, 1.0, True, default_num_frames=240)
    return ModelVariant("mid", sampler, is_cfg_zero_star, False, (20,) * stages, 5.0, False)


_VARIANT_CONFIGS = {
    "base": ({"_class_name": "HeliosPipeline"}, {"_class_name": "HeliosScheduler", "stages": 1, "stage_range": [0, 1]}),
    "mid": ({"_class_name": "HeliosPyramidPipeline"}, {"_class_name": "HeliosScheduler"}),
    "distilled": ({"_class_name": "HeliosPyramidPipeline"}, {"_class_name": "HeliosDMDScheduler"}),
}


def official_variant(name: str) -> ModelVariant:
    """A released variant's recipe without its checkpoint at hand ('base', 'mid' or 'distilled')."""
    return variant_from_configs(*_VARIANT_CONFIGS[name])


def read_variant(root: Path) -> ModelVariant:
    def load(path: Path) -> dict:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{root} is not a Helios checkpoint: {path.name} is missing") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc

    return variant_from_configs(load(root / "model_index.json"), load(root / "scheduler" / "scheduler_config.json"))


def resolve_model(name: str, cache_dir: str | None = None) -> str | Path:
    """One of BUILTIN_MODELS, or the directory of a diffusers-format checkpoint.

    ``cache_dir`` is the Hugging Face hub cache (default: HF_HUB_CACHE / HF_HOME); nothing is
    downloaded, only an existing snapshot is used.
    """
    if name in BUILTIN_MODELS:
        return name
    repo_id = MODEL_ALIASES.get(name, name)
    local = Path(os.path.expanduser(name))
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise ModelNotFoundError(f"{local} is a directory but not a diffusers checkpoint (no model_index.json)")
        return local
    looked = [f"no local directory {local}"]
    if repo_id.count("/") == 1:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        from huggingface_hub import constants

        try:
            return Path(snapshot_download(repo_id=repo_id, local_files_only=True, cache_dir=cache_dir))
        except (LocalEntryNotFoundError, FileNotFoundError, OSError):
            looked.append(f"{repo_id} not in the Hugging Face cache {cache_dir or constants.HF_HUB_CACHE}")
    known = ", ".join([*BUILTIN_MODELS, *MODEL_ALIASES])
    raise ModelNotFoundError(f"model {name!r} not found: {'; '.join(looked)} (built-in names: {known})")
