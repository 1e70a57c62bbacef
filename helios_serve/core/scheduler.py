"""The step scheduler: each engine step, which requests' next units of work run together.

Units of a request: encode, then per chunk: begin, one denoising step per (stage, step)
with a stage transition between stages, and a decode. A step runs ONE transformer forward,
made of ready requests whose next forward has the same token geometry (whatever its
timestep, settings or position in its video), within the row and token budgets and the
policy's share limit, plus the light units (begins, transitions, a few encodes and decodes).
New requests join and finished ones leave at every step. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import EngineConfig
from ..errors import QueueFullError, RequestTooLargeError
from ..model_executor.cost_model import ForwardTiming
from ..model_executor.step_io import StepPlan, StepResult
from ..request import Phase, Request, RequestStatus
from .policy import POLICIES


@dataclass
class SchedulerUpdate:
    finished: list[Request] = field(default_factory=list)
    """Requests that reached a final status since the last update (completed, failed, cancelled, timed out)."""


class Scheduler:
    def __init__(self, config: EngineConfig, patch_size: tuple[int, int, int],
                 forward_timing: ForwardTiming | None = None):
        """``forward_timing``: the cost model's forward time on the engine's device, for the
        policy's share limit; without it any compatible request may share a forward."""
        if config.max_rows_per_forward is None:
            raise ValueError("the scheduler needs a resolved EngineConfig (see EngineConfig.resolved)")
        self.config = config
        self.patch_size = tuple(patch_size)
        self.policy = POLICIES[config.policy](config)
        self.forward_timing = forward_timing
        self.waiting: list[Request] = []
        self.running: dict[str, Request] = {}
        self.step_count = 0
        self._to_free: list[str] = []
        self._finished: list[Request] = []
        self._prompt_switches: dict[str, object] = {}  # request id -> its spec with a new schedule

    # -- requests in and out ---------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        if len(self.waiting) >= self.config.max_waiting_requests:
            raise QueueFullError(f"the queue is full ({len(self.waiting)} requests waiting); retry later")
        tokens = max(self._tokens(request, stage) for stage in range(request.num_stages))
        if tokens > self.config.max_tokens_per_forward or request.rows_per_forward > self.config.max_rows_per_forward:
            raise RequestTooLargeError(
                f"one step of this request needs {tokens:,} tokens in {request.rows_per_forward} rows; the engine "
                f"allows {self.config.max_tokens_per_forward:,} tokens and {self.config.max_rows_per_forward} rows"
            )
        if request.timeout_s is None:
            request.timeout_s = self.config.request_timeout_s
        self.waiting.append(request)

    def abort_request(self, request_id: str, status: RequestStatus = RequestStatus.FINISHED_CANCELLED) -> Request | None:
        """Remove a request now; its device state is freed by the next step. None if unknown or done."""
        for request in self.waiting:
            if request.request_id == request_id:
                self.waiting.remove(request)
                request.status = status
                return request
        request = self.running.pop(request_id, None)
        if request is not None:
            request.status = status
            self._to_free.append(request_id)
        return request

    def switch_prompt(self, request_id: str, prompt: str, transition_chunks: int = 0) -> int:
        """Make ``prompt`` the request's prompt from its next chunk not begun (blended in over
        ``transition_chunks``); returns that chunk. KeyError if the request is not active;
        ValueError if every chunk has begun."""
        request = self.get(request_id)
        if request is None or request.status.is_finished:
            raise KeyError(request_id)
        from_chunk = request.chunks_begun
        if from_chunk >= request.spec.num_chunks:
            raise ValueError("every chunk of this video has begun; the prompt can no longer change")
        request.spec = request.spec.with_prompt_from(from_chunk, prompt, transition_chunks)
        if request.status is RequestStatus.RUNNING:  # its encode may have run: the runner must hear of it
            self._prompt_switches[request_id] = request.spec
        return from_chunk

    def idle_seconds(self, now: float) -> float | None:
        """How long until a paced request may begin its next chunk, when nothing else is due."""
        times = [t for r in self.running.values() if r.phase is Phase.BEGIN_CHUNK and (t := r.begin_time()) is not None]
        return max(0.0, min(times) - now) if times else None

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def get(self, request_id: str) -> Request | None:
        return self.running.get(request_id) or next((r for r in self.waiting if r.request_id == request_id), None)

    def _tokens(self, request: Request, stage: int | None = None) -> int:
        return request.rows_per_forward * request.geometry(stage).tokens_per_row(self.patch_size)

    # -- one step --------------------------------------------------------------------------
    def schedule(self, now: float) -> StepPlan:
        self.step_count += 1
        self._expire(now)
        plan = StepPlan(free=self._to_free, prompt_switches=self._prompt_switches)
        self._to_free, self._prompt_switches = [], {}
        self._admit(now)
        ready = sorted(self.running.values(), key=lambda r: self.policy.service_key(r, now))
        by_phase = {phase: [r for r in ready if r.phase is phase] for phase in Phase}
        encodes = by_phase[Phase.ENCODE][: self.config.max_encodes_per_step]
        in_flight = max(1, self.config.max_decodes_in_flight or 0)  # 0: serial, delivered in its own step
        decodes = [r for r in by_phase[Phase.DECODE] if r.decodes_in_flight < in_flight]
        decodes = decodes[: self.config.max_decodes_per_step]
        denoise = self._denoise_batch(by_phase[Phase.DENOISE])
        plan.encode = [(r.request_id, r.spec) for r in encodes]
        begin = [r for r in by_phase[Phase.BEGIN_CHUNK] if (r.begin_time() or now) <= now]
        plan.begin_chunk = [r.request_id for r in begin]
        plan.next_stage = [r.request_id for r in by_phase[Phase.NEXT_STAGE]]
        plan.denoise = [r.request_id for r in denoise]
        plan.decode = [r.request_id for r in decodes]
        for request in begin:
            request.chunks_begun = request.chunk_index + 1
        for request_id in plan.request_ids():
            request = self.running[request_id]
            request.last_served_step, request.last_served_time = self.step_count, now
            if request.phase is not Phase.ENCODE:
                plan.positions[request_id] = request.position
        return plan

    def _expire(self, now: float) -> None:
        expired = [r for r in [*self.waiting, *self.running.values()] if r.deadline_exceeded(now)]
        for request in expired:
            self.abort_request(request.request_id, RequestStatus.FINISHED_TIMEOUT)
            request.error = f"timed out after {request.timeout_s:g} s"
            self._finish(request, now)

    def _admit(self, now: float) -> None:
        self.waiting.sort(key=lambda r: self.policy.admission_key(r, now))
        while self.waiting and len(self.running) < self.config.max_running_requests:
            request = self.waiting.pop(0)
            request.status, request.admitted_time = RequestStatus.RUNNING, now
            self.running[request.request_id] = request

    def _denoise_batch(self, candidates: list[Request]) -> list[Request]:
        """The first candidate's geometry group, in service order, within the budgets and the
        policy's share limit (the forward at most that much slower than the first's alone)."""
        if not candidates:
            return []
        geometry = candidates[0].geometry()
        limit = self.policy.share_limit
        max_seconds = None
        if limit is not None and self.forward_timing is not None:
            max_seconds = (1 + limit) * self.forward_timing.seconds(self._flops(candidates[0]))
        batch, rows, tokens, flops = [], 0, 0, 0
        for request in candidates:
            if request.geometry() != geometry:
                continue
            need_rows, need_tokens, need_flops = request.rows_per_forward, self._tokens(request), self._flops(request)
            if rows + need_rows > self.config.max_rows_per_forward:
                continue
            if tokens + need_tokens > self.config.max_tokens_per_forward:
                continue
            if batch and max_seconds is not None and self.forward_timing.seconds(flops + need_flops) > max_seconds:
                continue
            batch.append(request)
            rows, tokens, flops = rows + need_rows, tokens + need_tokens, flops + need_flops
        return batch

    def _flops(self, request: Request) -> int:
        """FLOPs of the request's next forward (all its rows), by the cost model."""
        if self.forward_timing is None:
            return 0
        geometry = request.geometry()
        row = self.forward_timing.row_flops((geometry.noisy_height, geometry.noisy_width),
                                            (geometry.history_height, geometry.history_width))
        return request.rows_per_forward * row

    # -- after the step --------------------------------------------------------------------
    def update_from_output(self, plan: StepPlan, result: StepResult, now: float) -> SchedulerUpdate:
        for request_id in plan.request_ids():
            request = self.running.get(request_id)
            if request is None:  # cancelled while its unit ran; its state is freed next step
                continue
            if request_id in result.failed:
                del self.running[request_id]
                request.status, request.error = RequestStatus.FINISHED_FAILED, result.failed[request_id]
                self._finish(request, now)
                continue
            request.units_done += 1
            self._advance(request, now)
        for request_id, error in result.failed.items():  # a decode running behind failed
            request = self.running.pop(request_id, None)
            if request is not None:
                request.status, request.error = RequestStatus.FINISHED_FAILED, error
                self._finish(request, now)
        for chunk in result.chunks:
            request = self.running.get(chunk.request_id)
            if request is not None:
                self._delivered(request, chunk.chunk_index, now)
        update = SchedulerUpdate(finished=self._finished)
        self._finished = []
        return update

    def _advance(self, request: Request, now: float) -> None:
        phase = request.phase
        if phase is Phase.ENCODE:
            request.phase = Phase.BEGIN_CHUNK
        elif phase is Phase.BEGIN_CHUNK:
            request.phase, request.stage_index, request.step_index = Phase.DENOISE, 0, 0
        elif phase is Phase.NEXT_STAGE:
            request.phase, request.stage_index, request.step_index = Phase.DENOISE, request.stage_index + 1, 0
        elif phase is Phase.DENOISE:
            request.step_index += 1
            if request.step_index == request.steps_in_stage:
                last_stage = request.stage_index == request.num_stages - 1
                request.phase = Phase.DECODE if last_stage else Phase.NEXT_STAGE
        elif phase is Phase.DECODE:
            # The next chunk begins at once: its decode runs behind (at most max_decodes_in_flight).
            request.chunk_index += 1
            request.decodes_in_flight += 1
            last = request.chunk_index == request.spec.num_chunks
            request.phase, request.stage_index = (Phase.DRAIN, request.stage_index) if last else (Phase.BEGIN_CHUNK, 0)

    def _delivered(self, request: Request, chunk_index: int, now: float) -> None:
        """One of the request's chunks came out of its decode; the last completes the request."""
        request.decodes_in_flight -= 1
        request.delivered(chunk_index, now)
        if request.phase is Phase.DRAIN and request.decodes_in_flight == 0:
            del self.running[request.request_id]
            request.status = RequestStatus.FINISHED_COMPLETED
            self._finish(request, now)

    def _finish(self, request: Request, now: float) -> None:
        request.finished_time = now
        self._finished.append(request)
