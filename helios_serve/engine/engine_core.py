"""EngineCore: one engine step is schedule, then execute, then update."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace

from ..config import EngineConfig
from ..core.scheduler import Scheduler
from ..executor import build_executor
from ..model_executor.step_io import DecodedChunk, RequestSpec, RunnerConfig, StepResult
from ..request import Pacing, Request, RequestStatus


@dataclass
class EngineStats:
    """Cumulative counters; the benchmark and /metrics read them."""

    steps: int = 0
    step_seconds: float = 0.0
    model_seconds: float = 0.0
    forwards: int = 0
    rows: int = 0
    model_flops: int = 0
    """Transformer FLOPs of all forwards (cost model), for achieved FLOP/s and utilisation."""
    batch_size_counts: dict[int, int] = field(default_factory=dict)
    """Rows per forward -> number of forwards (a histogram, bounded in size)."""


@dataclass
class StepOutput:
    chunks: list[DecodedChunk]
    finished: list[Request]
    idle_s: float | None = None
    """Set when the step had nothing to do because every unfinished request is paced: seconds
    until one may go on (the step loop sleeps that long, or until woken)."""


class EngineCore:
    """Owns the scheduler and the executor.

    ``lock`` guards scheduler state so requests can be added or cancelled from another
    thread while a step runs; it is held around scheduling and bookkeeping only, never
    across the model's work.
    """

    def __init__(self, runner_config: RunnerConfig, engine_config: EngineConfig | None = None, clock=time.monotonic):
        engine_config = engine_config or EngineConfig()
        self.executor = build_executor(runner_config, engine_config)
        self.config = engine_config.resolved(self.executor.num_parameters, self.executor.decodes_in_background)
        self.scheduler = Scheduler(self.config, self.executor.patch_size, self.executor.forward_timing())
        self.clock = clock
        self.stats = EngineStats()
        self.lock = threading.Lock()
        self.step_listeners: list = []
        """Called after every step with (seconds, its StepResult), e.g. to feed metrics."""

    def add_request(
        self,
        request_id: str,
        spec: RequestSpec,
        priority: int = 0,
        realtime_fps: float | None = None,
        timeout_s: float | None = None,
        pacing: Pacing | None = None,
    ) -> Request:
        with self.lock:
            if self.scheduler.get(request_id) is not None:
                raise ValueError(f"request id {request_id!r} is already in use")
            request = Request(request_id, spec, self.clock(), priority, realtime_fps, timeout_s, pacing)
            self.scheduler.add_request(request)
        return request

    def abort_request(self, request_id: str) -> Request | None:
        with self.lock:
            return self.scheduler.abort_request(request_id, RequestStatus.FINISHED_CANCELLED)

    def switch_prompt(self, request_id: str, prompt: str, transition_chunks: int = 0) -> int:
        """The request follows ``prompt`` from its next chunk not begun (returned); see
        Scheduler.switch_prompt. Encode the prompt first (``executor.prepare_prompt``) so the
        step that applies it does not wait for the text encoder."""
        with self.lock:
            return self.scheduler.switch_prompt(request_id, prompt, transition_chunks)

    def has_unfinished(self) -> bool:
        with self.lock:
            return self.scheduler.num_unfinished > 0

    def step(self) -> StepOutput:
        started = time.perf_counter()
        with self.lock:
            plan = self.scheduler.schedule(self.clock())
        busy = not plan.is_empty or self.executor.pending_decodes
        result = self.executor.execute(plan) if busy else StepResult()
        with self.lock:
            update = self.scheduler.update_from_output(plan, result, self.clock())
            self._record(time.perf_counter() - started, result)
            idle_s = None if busy else self.scheduler.idle_seconds(self.clock())
        return StepOutput(result.chunks, update.finished, idle_s)

    def _record(self, seconds: float, result: StepResult) -> None:
        stats = self.stats
        stats.steps += 1
        stats.step_seconds += seconds
        stats.model_seconds += result.model_seconds
        if result.num_rows:
            stats.forwards += 1
            stats.rows += result.num_rows
            stats.model_flops += result.model_flops
            stats.batch_size_counts[result.num_rows] = stats.batch_size_counts.get(result.num_rows, 0) + 1
        for listener in self.step_listeners:
            listener(seconds, result)


class EngineFront:
    """What the sync and async engines share: an EngineCore built from a few options."""

    def __init__(
        self,
        model: str = "helios-tiny",
        device: str | None = None,
        dtype: str | None = None,
        engine_config: EngineConfig | None = None,
        kernels: str | None = None,
        model_config: RunnerConfig | None = None,
        **engine_options,
    ):
        """``model``, ``device``, ``dtype`` and ``kernels`` ("triton", "native"; None: by device) are
        a shortcut for ``model_config`` (the config tree's model section); ``engine_options`` are
        EngineConfig fields (max_rows_per_forward=4, policy="deadline", ...)."""
        engine_config = engine_config or EngineConfig(**engine_options)
        model_config = model_config or RunnerConfig(model=model, device=device, dtype=dtype, kernels=kernels)
        self.core = EngineCore(model_config, engine_config)
        self.model = model_config.model

    @property
    def variant(self):
        return self.core.executor.variant

    def close(self) -> None:
        """Release what the executor started (a sequence-parallel group's worker processes)."""
        self.core.executor.close()

    @property
    def stats(self) -> EngineStats:
        return self.core.stats

    def resolve(self, prompt: str, params) -> RequestSpec:
        """Validate a prompt and VideoSamplingParams against this model; ValueError names the field."""
        return params.resolve(prompt, self.variant, has_vae=self.core.executor.has_vae)

    def resumed(self, spec: RequestSpec, snapshot_path: str) -> RequestSpec:
        """``spec`` continued from a resume snapshot (after its completed chunks)."""
        done = self.core.executor.snapshot_chunks_done(snapshot_path)
        return replace(spec, resume_path=str(snapshot_path), start_chunk=done) if done else spec
