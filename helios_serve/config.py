"""Engine configuration: budgets of the step scheduler and its policy."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, replace

# A forward of the 14B model at 384x640 has 11,040 tokens (spec §8.1).
FULL_RES_TOKENS = 11_040
LARGE_MODEL_PARAMETERS = 1_000_000_000


def setting(default, help: str, flag: str | None = None, choices: tuple | None = None):
    """A config field that carries its help text (and CLI flag and choices): the one place both
    the docs and the command line read it from (see ``add_config_arguments``)."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices})


@dataclass(frozen=True)
class EngineConfig:
    max_rows_per_forward: int | None = setting(
        None, "rows (requests, two each with CFG) in one transformer forward; None derives it from the model size")
    max_tokens_per_forward: int | None = setting(
        None, "sum over rows of tokens (history + noisy) in one forward; None derives it from the model size")
    max_running_requests: int | None = setting(
        None, "requests holding device state at once, their slots; None derives it from the model size")
    max_waiting_requests: int = setting(256, "queue length past which new requests are refused with 429")
    policy: str = setting("fcfs", "ordering policy: fcfs, priority, or deadline (EDF for real-time streams)",
                          choices=("fcfs", "priority", "deadline"))
    max_encodes_per_step: int = setting(2, "prompt encodes run alongside one step's forward")
    max_decodes_per_step: int = setting(2, "chunk decodes run alongside one step's forward")
    request_timeout_s: float | None = setting(None, "default per-request time limit in seconds; None is no limit",
                                              flag="--request-timeout")
    priority_aging_s: float = setting(
        10.0, "priority policy: one priority level is gained per this many seconds without service")
    background_slack_s: float = setting(
        2.0, "deadline policy: requests without a playback rate are due this long after their last service")

    def __post_init__(self) -> None:
        for name in ("max_rows_per_forward", "max_tokens_per_forward", "max_running_requests"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        for name in ("max_waiting_requests", "max_encodes_per_step", "max_decodes_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        from .core.policy import POLICIES

        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {self.policy!r}")
        if self.request_timeout_s is not None and self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be positive, got {self.request_timeout_s}")

    def resolved(self, num_parameters: int) -> EngineConfig:
        """Fill the budgets left as None from the model size.

        A 14B model is compute-bound at batch 1 and each stage-2 row holds ~1.2-3 GiB of
        activations (performance-model.md §3.7), so a few rows per forward; a small model
        takes many.
        """
        large = num_parameters >= LARGE_MODEL_PARAMETERS
        rows = self.max_rows_per_forward or (8 if large else 32)
        return replace(
            self,
            max_rows_per_forward=rows,
            max_tokens_per_forward=self.max_tokens_per_forward or rows * FULL_RES_TOKENS,
            max_running_requests=self.max_running_requests or (32 if large else 64),
        )


def _flag(item: dataclasses.Field) -> str:
    return item.metadata.get("flag") or "--" + item.name.replace("_", "-")


def add_config_arguments(group, config_class) -> None:
    """One command-line flag per field of a config dataclass, typed from its default, with the
    field's help text and default (so every setting is reachable and documented once)."""
    for item in dataclasses.fields(config_class):
        kind = {"int": int, "float": float, "str": str}[str(item.type).split(" ")[0]]
        group.add_argument(_flag(item), dest=item.name, type=kind, default=item.default,
                           choices=item.metadata.get("choices"), help=item.metadata["help"])


def config_from_args(config_class, args: argparse.Namespace):
    """The config dataclass from the flags ``add_config_arguments`` added."""
    return config_class(**{item.name: getattr(args, item.name) for item in dataclasses.fields(config_class)})
