"""One engine over N ranks that split every forward's tokens (Ulysses sequence parallelism).

Rank 0 runs in the engine's process, beside the scheduler; ranks 1..N-1 are processes this
executor starts (``spawn``: one command, one port). Every step the plan goes to every rank over
a pipe, every rank executes it (the transformer's collectives keep them in step), and each
worker answers with the requests it failed. Only rank 0 decodes: the chunks and the result are
its own. Every rank builds the same model and the same request states from the same seeds.

A rank that dies (killed, out of memory) cannot be replaced inside a running group: the next
execute raises EngineDeadError naming it, the engine fails its requests with that message and
refuses new ones, and the server reports it on /health (it stays up, unhealthy, until restarted).
"""

from __future__ import annotations

import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from multiprocessing import connection, get_context

from .errors import EngineDeadError
from .executor import UniprocExecutor
from .model_executor.step_io import RunnerConfig, StepPlan, StepResult

logger = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT_S = 300.0
"""How long a rank waits in a collective (or the engine for a rank's answer) before giving up on
its peers: long enough for the first forward's kernel compilation, short of a hang forever."""
START_TIMEOUT_S = 1800.0
"""How long the ranks may take to load the model (a 14B checkpoint from a slow disk)."""


def rank_device(config: RunnerConfig, rank: int) -> str:
    """The device of ``rank``: the next GPUs after the configured one; every rank on the CPU."""
    device = config.resolved_device()
    if device.type != "cuda":
        return str(device)
    return f"cuda:{(device.index or 0) + rank}"


class SequenceParallelExecutor(UniprocExecutor):
    def __init__(self, runner_config: RunnerConfig, size: int, decode_in_background: bool | None = None):
        from .model_executor.model_runner import ModelRunner
        from .model_executor.sequence_parallel import join_group

        self.size = size
        self.dead: str | None = None
        """Why the group cannot run any more (a rank died), once it cannot."""
        address = f"127.0.0.1:{_free_port()}"
        context = get_context("spawn")
        self.workers: list[_Worker] = []
        for rank in range(1, size):
            config = replace(runner_config, device=rank_device(runner_config, rank))
            self.workers.append(_Worker(context, rank, size, address, config))
        config = replace(runner_config, device=rank_device(runner_config, 0))
        if decode_in_background is None:
            decode_in_background = config.resolved_device().type == "cuda"
        try:
            group = join_group(0, size, address, config.resolved_device(), COLLECTIVE_TIMEOUT_S)
            self.runner = ModelRunner(config, decode_in_background, sequence_parallel=group)
            for worker in self.workers:
                worker.receive("ready", START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        logger.info("sequence parallel over %d ranks (%s)", size, ", ".join(
            [str(self.runner.device)] + [w.config.device for w in self.workers]))

    def execute(self, plan: StepPlan) -> StepResult:
        if self.dead:
            raise EngineDeadError(self.dead)
        try:
            for worker in self.workers:
                worker.send(("execute", plan))
            result = self.runner.execute(plan)
            for worker in self.workers:
                for request_id, error in worker.receive("done", COLLECTIVE_TIMEOUT_S).items():
                    result.failed.setdefault(request_id, f"rank {worker.rank}: {error}")
        except EngineDeadError as exc:
            self.dead = str(exc)
            logger.error("%s", exc)
            self.close()
            raise
        return result

    def prepare_prompt(self, prompt: str) -> None:
        for worker in self.workers:  # they encode it on a thread of their own, as this rank does
            worker.send(("prepare_prompt", prompt))
        super().prepare_prompt(prompt)

    def peak_flops(self) -> tuple[float | None, str]:
        """The group's peak: every rank's device works on each forward."""
        peak, source = super().peak_flops()
        return (peak * self.size if peak else peak), f"{self.size} x {source}"

    def close(self) -> None:
        """Stop the worker ranks (asked first, then terminated) and leave the group."""
        import torch.distributed as dist

        for worker in self.workers:
            worker.stop()
        # NCCL may block tearing down a group with a dead peer; the process exits without it then.
        if dist.is_initialized() and not (self.dead and dist.get_backend() == "nccl"):
            dist.destroy_process_group()
        if getattr(self, "runner", None) is not None:
            super().close()


class _Worker:
    """One worker rank's process and the pipe the engine talks to it through."""

    def __init__(self, context, rank: int, size: int, address: str, config: RunnerConfig):
        self.rank = rank
        self.config = config
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_rank_main, args=(rank, size, address, config, child),
                                       name=f"helios-rank-{rank}", daemon=True)
        self.process.start()
        child.close()

    def send(self, message) -> None:
        try:
            self.conn.send(message)
        except OSError:
            raise EngineDeadError(self._death()) from None

    def receive(self, expected: str, timeout_s: float):
        """The payload of the rank's next message, which must be ``expected``."""
        ready = connection.wait([self.conn, self.process.sentinel], timeout_s)
        if self.conn in ready:
            try:
                kind, payload = self.conn.recv()
            except (EOFError, OSError):
                raise EngineDeadError(self._death()) from None
            if kind == expected:
                return payload
            raise EngineDeadError(f"sequence-parallel rank {self.rank} failed: {payload}")
        if ready:
            raise EngineDeadError(self._death())
        raise EngineDeadError(f"sequence-parallel rank {self.rank} did not answer within {timeout_s:.0f} s")

    def _death(self) -> str:
        self.process.join(timeout=5)
        code = self.process.exitcode
        how = f"exited with code {code}" if code is not None else "stopped answering"
        return f"sequence-parallel rank {self.rank} {how}; the engine cannot run without it until restarted"

    def stop(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send(("stop", None))
            except OSError:
                pass
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)
        self.conn.close()


def _rank_main(rank: int, size: int, address: str, config: RunnerConfig, conn) -> None:
    """A worker rank: join the group, load the model, then execute every plan the engine sends."""
    import torch

    from .model_executor.model_runner import ModelRunner
    from .model_executor.sequence_parallel import join_group

    device = config.resolved_device()
    if device.type == "cpu":  # share the cores with the other ranks instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
    try:
        group = join_group(rank, size, address, device, COLLECTIVE_TIMEOUT_S)
        runner = ModelRunner(config, sequence_parallel=group)
    except Exception as exc:  # noqa: BLE001 - reported to the engine, which fails to start with it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    prompts = ThreadPoolExecutor(1, thread_name_prefix="helios-prompts")
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):  # the engine's process is gone
            break
        if kind == "stop":
            break
        if kind == "prepare_prompt":
            prompts.submit(runner.encode_prompt, payload)
        elif kind == "execute":
            conn.send(("done", runner.execute(payload).failed))
    prompts.shutdown(wait=False, cancel_futures=True)
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
