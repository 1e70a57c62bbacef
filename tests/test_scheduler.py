"""The step scheduler with a fake runner: no torch, no model."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helios_serve.config import EngineConfig
from helios_serve.core.scheduler import Scheduler
from helios_serve.errors import QueueFullError, RequestTooLargeError
from helios_serve.model_executor.config import HELIOS_TINY
from helios_serve.model_executor.cost_model import ForwardTiming
from helios_serve.model_executor.step_io import DecodedChunk, RequestSpec, StepResult
from helios_serve.request import Phase, Request, RequestStatus

PATCH = (1, 2, 2)


def spec(num_frames=33, size=(64, 64), steps=(2, 2, 2), guidance=1.0, amplify=False) -> RequestSpec:
    return RequestSpec("p", "", num_frames, size[0], size[1], 0, guidance, tuple(steps), amplify_first_chunk=amplify)


def make_scheduler(**options) -> Scheduler:
    defaults = dict(max_rows_per_forward=8, max_tokens_per_forward=10**6, max_running_requests=8)
    return Scheduler(EngineConfig(**{**defaults, **options}), PATCH)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_step(scheduler: Scheduler, now: float, fail: frozenset[str] = frozenset()):
    """One engine step with a runner that does every unit instantly (failing the ids in ``fail``)."""
    plan = scheduler.schedule(now)
    result = StepResult(failed={rid: "boom" for rid in plan.request_ids() if rid in fail})
    result.chunks = [DecodedChunk(rid, 0, None) for rid in plan.decode if rid not in fail]
    update = scheduler.update_from_output(plan, result, now)
    return plan, update


def add(scheduler, request_id, now=0.0, **kwargs) -> Request:
    request = Request(request_id, kwargs.pop("spec", spec()), now, **kwargs)
    scheduler.add_request(request)
    return request


def test_scheduler_imports_no_torch():
    code = "import sys, helios_serve.core.scheduler, helios_serve.engine; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_lifecycle_runs_every_unit_in_order():
    scheduler = make_scheduler()
    request = add(scheduler, "a", spec=spec(num_frames=40, steps=(1, 2, 1)))
    phases, now = [], 0.0
    while not request.status.is_finished:
        plan, _ = run_step(scheduler, now)
        phases.append(next(name for name in ("encode", "begin_chunk", "next_stage", "denoise", "decode")
                           if "a" in (plan.request_ids() if name == "encode" and plan.encode else getattr(plan, name))))
        now += 1
    chunk = ["begin_chunk", "denoise", "next_stage", "denoise", "denoise", "next_stage", "denoise", "decode"]
    assert phases == ["encode", *chunk, *chunk]
    assert request.status is RequestStatus.FINISHED_COMPLETED
    assert request.units_done == request.total_units == len(phases)


def test_same_geometry_batches_across_timesteps():
    scheduler = make_scheduler()
    add(scheduler, "a", spec=spec(steps=(8, 1, 1)))
    for t in range(4):  # "a" is now two steps into stage 0
        run_step(scheduler, t)
    add(scheduler, "b", now=4, spec=spec(steps=(8, 1, 1), guidance=5.0))  # CFG: two rows
    batched = []
    for t in range(4, 12):
        plan, _ = run_step(scheduler, t)
        if len(plan.denoise) > 1:
            batched.append(sorted(plan.denoise))
    assert batched and batched[0] == ["a", "b"]  # different step indices, one forward


def test_different_geometry_never_shares_a_forward():
    scheduler = make_scheduler()
    add(scheduler, "small", spec=spec(size=(64, 64)))
    add(scheduler, "large", spec=spec(size=(128, 128)))
    seen = set()
    for t in range(30):
        plan, _ = run_step(scheduler, t)
        geometries = {scheduler.running[r].geometry() for r in plan.denoise if r in scheduler.running}
        assert len(geometries) <= 1
        seen.update(plan.denoise)
    assert seen == {"small", "large"}


def test_row_and_token_budgets():
    scheduler = make_scheduler(max_rows_per_forward=3)
    for name in "abcd":
        add(scheduler, name, spec=spec(guidance=5.0 if name == "a" else 1.0))  # a: 2 rows
    rows = []
    for t in range(12):
        plan, _ = run_step(scheduler, t)
        rows.append(sum(scheduler.running[r].rows_per_forward if r in scheduler.running else 1 for r in plan.denoise))
    assert max(rows) == 3
    single_stage = spec(steps=(3,))  # every forward at full resolution
    tokens_one = Request("x", single_stage, 0).geometry().tokens_per_row(PATCH)
    scheduler = make_scheduler(max_tokens_per_forward=2 * tokens_one)
    for name in "abc":
        add(scheduler, name, spec=single_stage)
    sizes = [len(run_step(scheduler, t)[0].denoise) for t in range(10)]
    assert max(sizes) == 2


def test_max_running_requests_and_continuous_admission():
    scheduler = make_scheduler(max_running_requests=2)
    for name in "abc":
        add(scheduler, name)
    run_step(scheduler, 0)
    assert set(scheduler.running) == {"a", "b"} and [r.request_id for r in scheduler.waiting] == ["c"]
    finished, t = [], 1
    while "a" not in finished:
        finished += [r.request_id for r in run_step(scheduler, t)[1].finished]
        t += 1
    plan, _ = run_step(scheduler, t)  # the freed slot goes to "c" at once
    assert "c" in scheduler.running and ("c", scheduler.running["c"].spec) in plan.encode


def test_cancellation_frees_the_slot_within_one_step():
    scheduler = make_scheduler(max_running_requests=1)
    add(scheduler, "a", spec=spec(num_frames=330))
    add(scheduler, "b")
    for t in range(3):
        run_step(scheduler, t)
    cancelled = scheduler.abort_request("a")
    assert cancelled.status is RequestStatus.FINISHED_CANCELLED
    plan, _ = run_step(scheduler, 3)
    assert plan.free == ["a"] and "a" not in plan.request_ids()
    assert "b" in scheduler.running and plan.encode[0][0] == "b"
    assert scheduler.abort_request("a") is None  # already gone


def test_cancel_while_its_unit_runs():
    scheduler = make_scheduler()
    add(scheduler, "a")
    plan = scheduler.schedule(0)
    scheduler.abort_request("a")
    update = scheduler.update_from_output(plan, StepResult(), 0)
    assert update.finished == [] and scheduler.num_unfinished == 0
    assert scheduler.schedule(1).free == ["a"]


def test_failure_fails_only_that_request():
    scheduler = make_scheduler()
    add(scheduler, "good")
    add(scheduler, "bad")
    for t in range(3):
        _, update = run_step(scheduler, t, fail=frozenset({"bad"}) if t == 2 else frozenset())
    assert [r.request_id for r in update.finished] == ["bad"]
    assert update.finished[0].status is RequestStatus.FINISHED_FAILED and update.finished[0].error == "boom"
    assert "good" in scheduler.running


def test_timeout():
    scheduler = make_scheduler(request_timeout_s=5.0)
    request = add(scheduler, "a", spec=spec(num_frames=330))
    run_step(scheduler, 1.0)
    plan, update = run_step(scheduler, 6.0)
    assert request.status is RequestStatus.FINISHED_TIMEOUT and update.finished == [request]
    assert "timed out" in request.error and "a" in plan.free


def test_admission_control():
    scheduler = make_scheduler(max_waiting_requests=2, max_running_requests=1)
    add(scheduler, "a")
    add(scheduler, "b")
    with pytest.raises(QueueFullError):
        add(scheduler, "c")
    with pytest.raises(RequestTooLargeError, match="tokens"):
        make_scheduler(max_tokens_per_forward=100).add_request(Request("big", spec(size=(512, 512)), 0))


def test_deadline_policy_serves_the_earliest_deadline_first():
    scheduler = make_scheduler(policy="deadline", background_slack_s=100.0)
    quick = dict(num_frames=330, steps=(4, 4, 4))
    background = add(scheduler, "background", spec=spec(size=(128, 128), **quick))
    relaxed = add(scheduler, "relaxed", spec=spec(size=(64, 128), **quick), realtime_fps=8.0)
    urgent = add(scheduler, "urgent", spec=spec(size=(64, 64), **quick), realtime_fps=24.0)
    t = 0.0
    while relaxed.chunk_index < 1 or urgent.chunk_index < 1:  # chunk 0 of each stream is due at once
        run_step(scheduler, t)
        t += 0.01
    # Playback started; chunk 1 is due 33/24 s later for urgent, 33/8 s for relaxed.
    assert urgent.chunk_deadline() < relaxed.chunk_deadline() < background.last_served_time + 100.0
    contested = 0
    for _ in range(30):  # whenever both streams want the (single) forward, the earlier deadline gets it
        both_ready = urgent.phase is Phase.DENOISE and relaxed.phase is Phase.DENOISE
        stream_ready = urgent.phase is Phase.DENOISE or relaxed.phase is Phase.DENOISE
        plan, _ = run_step(scheduler, t)
        if both_ready:
            contested += 1
            assert plan.denoise == ["urgent"]
        if stream_ready:  # the background job only gets forwards the streams do not need
            assert "background" not in plan.denoise
    assert contested >= 3


def count_service(scheduler, names, steps, start=0.0, dt=1.0):
    served = dict.fromkeys(names, 0)
    for t in range(steps):
        plan, _ = run_step(scheduler, start + dt * t)
        for rid in plan.denoise:
            if rid in served:
                served[rid] += 1
    return served


@pytest.mark.parametrize("policy", ["round-robin", "priority", "deadline"])
def test_no_request_starves(policy):
    """Three geometry groups and a favoured request: everyone's denoising keeps moving (fcfs
    instead finishes them one after another, tested below)."""
    scheduler = make_scheduler(policy=policy, priority_aging_s=2.0, background_slack_s=2.0)
    add(scheduler, "favoured", spec=spec(num_frames=3300, size=(64, 64)), priority=-5, realtime_fps=1000.0)
    add(scheduler, "b", spec=spec(num_frames=3300, size=(128, 64)), priority=5)
    add(scheduler, "c", spec=spec(num_frames=3300, size=(64, 128)), priority=5)
    served = count_service(scheduler, ["favoured", "b", "c"], 120)
    assert all(count > 5 for count in served.values()), served


def test_round_robin_takes_turns_between_groups():
    scheduler = make_scheduler(policy="round-robin")
    add(scheduler, "a", spec=spec(num_frames=330, size=(64, 64)))
    add(scheduler, "b", spec=spec(num_frames=330, size=(128, 128)))
    served = count_service(scheduler, ["a", "b"], 40)
    assert abs(served["a"] - served["b"]) <= 2


# -- fcfs: arrival order, sharing a forward only when the cost model says it is cheap -------------
def timing(fixed_s: float, seconds_per_row: float) -> ForwardTiming:
    """A forward timing where every row of the 64x64 geometry costs ``seconds_per_row``."""
    row_flops = ForwardTiming(HELIOS_TINY, 1.0, 0.0).row_flops(*_hw(spec()))
    return ForwardTiming(HELIOS_TINY, row_flops / seconds_per_row, fixed_s)


def _hw(request_spec: RequestSpec):
    geometry = Request("probe", request_spec, 0.0).geometry(0)
    return (geometry.noisy_height, geometry.noisy_width), (geometry.history_height, geometry.history_width)


def run_to_completion(scheduler: Scheduler, requests: list[Request]) -> tuple[list[str], list[list[str]]]:
    """(the order requests finished in, every forward's request ids)."""
    finished, forwards, now = [], [], 0.0
    while not all(r.status.is_finished for r in requests):
        plan, update = run_step(scheduler, now)
        if plan.denoise:
            forwards.append(plan.denoise)
        finished += [r.request_id for r in update.finished]
        now += 1
    return finished, forwards


def test_fcfs_finishes_compute_bound_requests_in_arrival_order():
    """A row costs as much as the forward's fixed part: sharing would slow the oldest 2x, so each
    forward serves one request and they finish in the order they came."""
    scheduler = Scheduler(EngineConfig(max_rows_per_forward=8, max_tokens_per_forward=10**6, max_running_requests=8),
                          PATCH, timing(fixed_s=0.01, seconds_per_row=0.01))
    requests = [add(scheduler, name, now=i * 0.1, spec=spec(num_frames=66, steps=(1, 1, 1)))
                for i, name in enumerate("abcd")]
    finished, forwards = run_to_completion(scheduler, requests)
    assert finished == ["a", "b", "c", "d"]
    assert all(len(batch) == 1 for batch in forwards)
    # The younger ones still move while the oldest runs its light units (begins, stage changes, decodes).
    first_done = next(i for i, batch in enumerate(forwards) if batch == ["b"])
    assert first_done < sum(1 for batch in forwards if batch == ["a"])


def test_fcfs_shares_a_launch_bound_forward():
    """Rows cost 0.1% of the fixed part (at stage 0; the last stage's 3x more): everyone
    shares, as with round-robin."""
    config = EngineConfig(max_rows_per_forward=8, max_tokens_per_forward=10**6, max_running_requests=8,
                          max_encodes_per_step=4)
    scheduler = Scheduler(config, PATCH, timing(fixed_s=1.0, seconds_per_row=0.001))
    requests = [add(scheduler, name, spec=spec(num_frames=33, steps=(1, 1, 1))) for name in "abc"]
    _, forwards = run_to_completion(scheduler, requests)
    assert forwards == [["a", "b", "c"]] * 3


@pytest.mark.parametrize("limit, joined", [(0.0, 1), (0.1, 3), (0.25, 6), (1.0, 8)])
def test_fcfs_share_limit_is_the_forward_slowdown(limit, joined):
    """Fixed part 1 s, 0.05 s per row: the oldest alone takes 1.05 s, and n rows 1 + 0.05 n, so
    within (1 + limit) * 1.05 s fit floor((1.05 * limit + 0.05) / 0.05) rows (at most 8, the row budget)."""
    config = EngineConfig(max_rows_per_forward=8, max_tokens_per_forward=10**6, max_running_requests=16,
                          max_encodes_per_step=16, max_share_slowdown=limit)
    scheduler = Scheduler(config, PATCH, timing(fixed_s=1.0, seconds_per_row=0.05))
    for i in range(12):
        add(scheduler, f"r{i}", now=i, spec=spec(num_frames=33, steps=(1, 1, 1)))
    run_step(scheduler, 0.0)  # the encodes
    forwards = [plan.denoise for plan, _ in (run_step(scheduler, t) for t in range(1, 12)) if plan.denoise]
    assert len(forwards[0]) == joined
    assert forwards[0][0] == "r0"


def test_without_a_timing_fcfs_shares_whatever_fits():
    scheduler = make_scheduler()
    requests = [add(scheduler, name, spec=spec(num_frames=33, steps=(1, 1, 1))) for name in "ab"]
    _, forwards = run_to_completion(scheduler, requests)
    assert forwards == [["a", "b"]] * 3
