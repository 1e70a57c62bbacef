"""Finding a Helios checkpoint by name and reading which variant it is (spec §1.2, §1.3).

A name is one of: a built-in (``helios-tiny``, ``helios-tiny-mid``, ``helios-tiny-base``,
``helios-distilled-random``); an alias (``helios-base``, ``helios-mid``, ``helios-distilled``) for
the released Hugging Face repos; a Hugging Face repo id, taken from the local cache or downloaded
into it (only the files loading reads); or a local directory in diffusers format.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
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
CHECKPOINT_COMPONENTS = ("scheduler", "text_encoder", "tokenizer", "transformer", "vae")
CHECKPOINT_FILES = (
    "model_index.json",
    "scheduler/*.json",
    "tokenizer/*",
    *(f"{component}/*.{kind}" for component in ("text_encoder", "transformer", "vae")
      for kind in ("json", "safetensors")),
)
"""What loading a diffusers Helios checkpoint reads (snapshot_download's allow_patterns). The
released repos hold more that is never loaded: transformer_init/ or transformer_ode/ (training
stages' weights, as large as transformer/), guider/, modular_model_index.json."""
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


def resolve_model(name: str, download_dir: str | None = None, revision: str | None = None) -> str | Path:
    """One of BUILTIN_MODELS, or the directory of a diffusers-format checkpoint: a local folder, or
    the Hugging Face snapshot of an alias or repo id, downloaded when the cache lacks it.

    Every command and the loader of every replica call this, so they accept the same names.
    ``download_dir`` is the Hugging Face hub cache (default: HF_HUB_CACHE, else HF_HOME/hub) and
    ``revision`` a branch, tag or commit (default: main). A snapshot already in the cache is used
    without asking the Hub, so a restart never waits on the network; HF_HUB_OFFLINE=1 forbids the
    download, as in vLLM.
    """
    if name in BUILTIN_MODELS:
        return name
    local = Path(os.path.expanduser(name))
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise ModelNotFoundError(f"{local} is a directory but not a diffusers checkpoint (no model_index.json)")
        return local
    repo_id = MODEL_ALIASES.get(name, name)
    if not is_repo_id(repo_id):
        # A typo of a built-in name lands here: it is never sent to the Hub.
        known = ", ".join([*BUILTIN_MODELS, *MODEL_ALIASES])
        raise ModelNotFoundError(f"model {name!r} not found: no local directory {local}, and not a Hugging Face "
                                 f"repo id like Org/Name (built-in names: {known})")
    snapshot = cached_snapshot(repo_id, download_dir, revision)
    return snapshot if snapshot is not None else download_snapshot(name, repo_id, download_dir, revision)


def is_repo_id(text: str) -> bool:
    if text.count("/") != 1:
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def cached_snapshot(repo_id: str, download_dir: str | None = None, revision: str | None = None) -> Path | None:
    """The cache's complete snapshot of ``repo_id`` at ``revision``, or None; never uses the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=download_dir,
                                        allow_patterns=list(CHECKPOINT_FILES), local_files_only=True))
    except LocalEntryNotFoundError:  # also a snapshot the cached file listing shows incomplete
        return None
    return folder if _has_components(folder) else None


def _has_components(folder: Path) -> bool:
    """model_index.json and a folder for each Helios component it names: an interrupted download,
    or another tool's fetch of the index alone, is not a checkpoint yet."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all((folder / component).is_dir() for component in CHECKPOINT_COMPONENTS if index.get(component))


def download_snapshot(name: str, repo_id: str, download_dir: str | None = None, revision: str | None = None) -> Path:
    """Download the CHECKPOINT_FILES of ``repo_id`` into the Hugging Face cache, with huggingface_hub's
    progress bars on stderr. Any failure is one line that ends with the command that fetches it."""
    from huggingface_hub import constants, snapshot_download

    cache = download_dir or constants.HF_HUB_CACHE
    wanted = repo_id + (f" at revision {revision}" if revision else "")
    described = wanted if name == repo_id else f"model {name!r} ({wanted})"
    fetch = download_command(repo_id, download_dir, revision)
    if constants.HF_HUB_OFFLINE:
        # The same shell still has the variable set: the command must lift it to work as printed.
        raise ModelNotFoundError(f"{described} is not in the Hugging Face cache {cache}, and HF_HUB_OFFLINE=1 "
                                 f"forbids downloading it; fetch it with: HF_HUB_OFFLINE=0 {fetch}")
    print(f"downloading {wanted} from {constants.ENDPOINT} into {cache} (only the files a Helios checkpoint "
          f"loads: about 80 GB for the released 14B models)", file=sys.stderr, flush=True)
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=download_dir,
                                        allow_patterns=list(CHECKPOINT_FILES)))
    except Exception as exc:  # HTTP, connection or disk: every one is reported the same way
        raise ModelNotFoundError(f"cannot download {described} from {constants.ENDPOINT}: {_download_failure(exc)}; "
                                 f"fetch it with: {fetch}") from exc
    if not (folder / "model_index.json").is_file():
        raise ModelNotFoundError(f"{wanted} is not a diffusers checkpoint: it has no model_index.json")
    return folder


def download_command(repo_id: str, download_dir: str | None = None, revision: str | None = None) -> str:
    """The shell command that fetches what download_snapshot would. huggingface_hub 1.0 and newer
    (setup.py requires it) ships ``hf``; its ``huggingface-cli`` only says it no longer works."""
    words = ["hf", "download", repo_id]
    for pattern in CHECKPOINT_FILES:
        words += ["--include", pattern]
    if revision:
        words += ["--revision", revision]
    if download_dir:
        words += ["--cache-dir", download_dir]
    return shlex.join(words)


def _download_failure(exc: Exception) -> str:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return "the repository is gated: accept its terms on the Hub, then log in (hf auth login, or set HF_TOKEN)"
    if isinstance(exc, RepositoryNotFoundError):
        return "no such repository (a private one needs hf auth login, or HF_TOKEN)"
    if isinstance(exc, RevisionNotFoundError):
        return "the repository has no such revision"
    if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is not None:
        exc = exc.__cause__  # the Hub was unreachable: say why, not that the cache lacks it too
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
