"""Engine configuration: budgets of the step scheduler and its policy."""

from __future__ import annotations

from dataclasses import dataclass, replace

# A forward of the 14B model at 384x640 has 11,040 tokens (spec §8.1).
FULL_RES_TOKENS = 11_040
LARGE_MODEL_PARAMETERS = 1_000_000_000


@dataclass(frozen=True)
class EngineConfig:
    max_rows_per_forward: int | None = None
    """Rows (requests, two each with CFG) in one transformer forward; None derives it from the model size."""
    max_tokens_per_forward: int | None = None
    """Sum over rows of tokens (history + noisy) in one forward; None derives it from the model size."""
    max_running_requests: int | None = None
    """Requests holding device state at once (their slots); None derives it from the model size."""
    max_waiting_requests: int = 256
    """Queue length past which new requests are refused (admission control)."""
    policy: str = "fcfs"
    """Ordering policy: 'fcfs', 'priority' or 'deadline' (EDF for real-time streams)."""
    max_encodes_per_step: int = 2
    """Prompt encodes run alongside one step's forward."""
    max_decodes_per_step: int = 2
    """Chunk decodes run alongside one step's forward."""
    request_timeout_s: float | None = None
    """Default per-request time limit in seconds (None: no limit)."""
    priority_aging_s: float = 10.0
    """'priority' policy: one priority level is gained per this many seconds without service."""
    background_slack_s: float = 2.0
    """'deadline' policy: non-real-time requests are due this long after their last service."""

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
