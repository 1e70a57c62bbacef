"""Executors run a StepPlan on the model. The only place in helios_serve that builds a ModelRunner."""

from __future__ import annotations

from .model_executor.step_io import RunnerConfig, StepPlan, StepResult


def build_executor(runner_config: RunnerConfig, engine_config):
    """The ModelRunner in this process, a sequence-parallel group of them (rank 0 here), or with
    ``engine_config.simulate`` a simulated GPU."""
    in_flight = engine_config.max_decodes_in_flight
    decode_in_background = None if in_flight is None else in_flight > 0
    if engine_config.simulate:
        if engine_config.sequence_parallel_size > 1:
            raise ValueError("simulate models one GPU per engine; for sequence parallelism see `helios-serve estimate`")
        from .simulated_executor import SimulatedExecutor

        return SimulatedExecutor(runner_config.model, engine_config.simulate, engine_config.simulate_mfu,
                                 runner_config.vae_dtype, decode_in_background)
    if engine_config.sequence_parallel_size > 1:
        from .parallel_executor import SequenceParallelExecutor

        return SequenceParallelExecutor(runner_config, engine_config.sequence_parallel_size, decode_in_background)
    return UniprocExecutor(runner_config, decode_in_background)


class UniprocExecutor:
    """The ModelRunner in this process (one device)."""

    def __init__(self, runner_config, decode_in_background: bool | None = None):
        """``decode_in_background`` None: on CUDA only (on a CPU the decode thread would compete
        with the forward for the same cores)."""
        from .model_executor.model_runner import ModelRunner

        if decode_in_background is None:
            decode_in_background = runner_config.resolved_device().type == "cuda"
        self.runner = ModelRunner(runner_config, decode_in_background)

    @property
    def decodes_in_background(self) -> bool:
        return self.runner.decodes.background

    @property
    def variant(self):
        return self.runner.variant

    @property
    def has_vae(self) -> bool:
        return self.runner.vae is not None

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return self.runner.transformer.config.patch_size

    @property
    def attention_backend(self) -> str:
        return self.runner.attention_backend

    def peak_flops(self) -> tuple[float | None, str]:
        """The device's peak FLOP/s and where the figure comes from (hardware.device_peak_flops)."""
        from .hardware import device_peak_flops

        return device_peak_flops(self.runner.device, self.runner.dtype)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.runner.transformer.parameters())

    def forward_timing(self):
        """The cost model's forward time on this device (for the scheduler's share limit)."""
        from .hardware import forward_timing

        return forward_timing(self.runner.transformer.config, self.num_parameters, self.runner.device,
                              self.runner.dtype)

    @staticmethod
    def snapshot_chunks_done(path: str) -> int:
        """How many chunks a resume snapshot has behind it (it is read with torch, so here)."""
        from .model_executor.resume import load_snapshot

        return load_snapshot(path).chunks_done

    @property
    def pending_decodes(self) -> int:
        return self.runner.pending_decodes

    def prepare_prompt(self, prompt: str) -> None:
        """Encode a prompt ahead (any thread), so switching a running request to it costs the
        engine step no text encode (the encoder's cache hands it over)."""
        self.runner.encode_prompt(prompt)

    def execute(self, plan: StepPlan) -> StepResult:
        return self.runner.execute(plan)

    def close(self) -> None:
        self.runner.decodes.close()
