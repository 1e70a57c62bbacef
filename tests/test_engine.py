"""The continuous-batching engine on the real helios-tiny models."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from helios_serve import HeliosEngine, VideoSamplingParams
from helios_serve.engine.async_engine import AsyncHeliosEngine
from helios_serve.errors import RequestCancelledError, RequestFailedError
from helios_serve.request import RequestStatus

SMALL = dict(height=64, width=64)


def solo(engine: HeliosEngine, prompt: str, params: VideoSamplingParams) -> np.ndarray:
    (video,) = engine.generate(prompt, params)
    return video.frames


@pytest.mark.parametrize(
    "model,settings",
    [
        (
            "helios-tiny",  # DMD pyramid: amplified or not, different steps and lengths, one with CFG
            [
                dict(num_frames=99, seed=1),
                dict(num_frames=40, seed=2, is_amplify_first_chunk=False, pyramid_num_inference_steps_list=(1, 2, 1)),
                dict(num_frames=66, seed=3, guidance_scale=3.0),
            ],
        ),
        (
            "helios-tiny-mid",  # UniPC pyramid: CFG-Zero*, plain CFG, no guidance
            [
                dict(num_frames=66, seed=4),
                dict(num_frames=33, seed=5, use_cfg_zero_star=False),
                dict(num_frames=99, seed=6, guidance_scale=1.0, pyramid_num_inference_steps_list=(2, 2, 2)),
            ],
        ),
    ],
)
def test_batched_equals_sequential(model, settings):
    engine = HeliosEngine(model, policy="round-robin")
    params = [VideoSamplingParams(**SMALL, **s) for s in settings]
    prompts = [f"prompt {i}" for i in range(len(params))]
    together = engine.generate(prompts, params)
    assert max(engine.stats.batch_size_counts) > 2, engine.stats.batch_size_counts  # steps really were batched
    for prompt, p, video in zip(prompts, params, together):
        assert np.array_equal(video.frames, solo(HeliosEngine(model), prompt, p))


def test_cancellation_frees_capacity():
    engine = HeliosEngine(max_running_requests=1)
    core = engine.core
    long = core.add_request("long", engine.resolve("a", VideoSamplingParams(num_frames=330, **SMALL)))
    short = core.add_request("short", engine.resolve("b", VideoSamplingParams(num_frames=33, **SMALL)))
    for _ in range(4):
        core.step()
    assert "long" in core.executor.runner.requests and short.status is RequestStatus.WAITING
    core.abort_request("long")
    core.step()  # frees the slot and admits the next request in the same step
    assert "long" not in core.executor.runner.requests
    assert short.status is RequestStatus.RUNNING and "short" in core.executor.runner.requests
    while core.has_unfinished():
        core.step()
    assert short.status is RequestStatus.FINISHED_COMPLETED and long.status is RequestStatus.FINISHED_CANCELLED


def run_to_completion(engine: HeliosEngine, requests: dict[str, tuple[str, VideoSamplingParams]]):
    """Submit with explicit ids, step until done; returns ({id: frames}, {id: finished request})."""
    for request_id, (prompt, params) in requests.items():
        engine.core.add_request(request_id, engine.resolve(prompt, params))
    frames, finished = {rid: [] for rid in requests}, {}
    while engine.core.has_unfinished():
        output = engine.core.step()
        for chunk in output.chunks:
            frames[chunk.request_id].append(chunk.frames)
        finished.update({r.request_id: r for r in output.finished})
    return {rid: np.concatenate(f) if f else None for rid, f in frames.items()}, finished


def test_a_failing_forward_fails_only_its_request(monkeypatch):
    requests = {name: (name, VideoSamplingParams(num_frames=66, seed=s, **SMALL))
                for name, s in (("fine", 1), ("poison", 2), ("also fine", 3))}
    engine = HeliosEngine()
    runner = engine.core.executor.runner
    real_forward = runner.forward
    bad_text = runner.text_encoder.encode("poison")

    def forward(states):
        if any(torch.equal(s.text, bad_text) for s in states):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_forward(states)

    monkeypatch.setattr(runner, "forward", forward)
    frames, finished = run_to_completion(engine, requests)
    assert finished["poison"].status is RequestStatus.FINISHED_FAILED
    assert "illegal memory access" in finished["poison"].error and frames["poison"] is None
    reference = HeliosEngine()
    for name in ("fine", "also fine"):  # batch mates finished, with exactly their solo frames
        assert finished[name].status is RequestStatus.FINISHED_COMPLETED
        assert np.array_equal(frames[name], solo(reference, *requests[name]))


def test_a_failing_decode_fails_only_its_request(monkeypatch):
    engine = HeliosEngine()
    runner = engine.core.executor.runner
    real_decode = runner.preview.decode_frames
    calls = []

    def decode(latents):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("decoder ran out of memory")
        return real_decode(latents)

    monkeypatch.setattr(runner.preview, "decode_frames", decode)
    requests = {name: (name, VideoSamplingParams(num_frames=33, seed=1, **SMALL)) for name in ("a", "b", "c")}
    frames, finished = run_to_completion(engine, requests)
    statuses = sorted(r.status.name for r in finished.values())
    assert statuses == ["FINISHED_COMPLETED", "FINISHED_COMPLETED", "FINISHED_FAILED"]
    assert sum(f is None for f in frames.values()) == 1


def test_non_finite_latents_fail_the_request(monkeypatch):
    engine = HeliosEngine()
    procedure = engine.core.executor.runner.procedure
    real_apply = procedure.apply_model_output

    def apply(state, velocities):
        real_apply(state, velocities)
        if state.spec.seed == 13:
            state.latents = state.latents * float("nan")

    monkeypatch.setattr(procedure, "apply_model_output", apply)
    with pytest.raises(RequestFailedError, match="non-finite latents"):
        engine.generate(["x", "y"], [VideoSamplingParams(seed=13, **SMALL), VideoSamplingParams(seed=1, **SMALL)])


def test_timeout():
    engine = HeliosEngine(request_timeout_s=0.001)
    with pytest.raises(RequestCancelledError, match="timed out"):
        engine.generate("x", VideoSamplingParams(num_frames=330, **SMALL))


def test_async_engine_streams_and_cancels():
    async def scenario():
        engine = AsyncHeliosEngine()
        try:
            params = VideoSamplingParams(num_frames=132, seed=7, **SMALL)
            seen = []
            async for chunk in engine.generate("a lantern", params):
                waiting, running = engine.queue_depth()
                seen.append((chunk.chunk_index, running))
            assert [index for index, _ in seen] == [0, 1, 2, 3]
            assert seen[0][1] == 1  # the first chunk arrived while the request was still running

            async def first_chunk_then_leave():
                async for _ in engine.generate("cancel me", VideoSamplingParams(num_frames=660, **SMALL)):
                    return  # leaving the loop cancels the request

            streams = [engine.generate("a lantern", params), engine.generate("a fox", params.with_updates(seed=8))]
            results = await asyncio.gather(
                first_chunk_then_leave(), *[_collect(s) for s in streams]
            )
            await asyncio.sleep(0.2)
            assert engine.queue_depth() == (0, 0)
            return results[1:], engine.stats
        finally:
            engine.shutdown()

    (lantern, fox), stats = asyncio.run(scenario())
    reference = HeliosEngine()
    assert np.array_equal(lantern, solo(reference, "a lantern", VideoSamplingParams(num_frames=132, seed=7, **SMALL)))
    assert np.array_equal(fox, solo(reference, "a fox", VideoSamplingParams(num_frames=132, seed=8, **SMALL)))


async def _collect(stream) -> np.ndarray:
    return np.concatenate([chunk.frames async for chunk in stream])


def test_a_resumed_request_continues_exactly(tmp_path):
    """Snapshot after chunk 1, restart on a fresh engine: chunks 1 and 2 are the same frames."""
    import dataclasses

    from helios_serve.model_executor.resume import save_snapshot

    engine = HeliosEngine()
    spec = dataclasses.replace(engine.resolve("a lantern", VideoSamplingParams(num_frames=99, seed=5, **SMALL)),
                               resumable=True)
    frames, snapshots = {}, {}
    engine.core.add_request("full", spec)
    while engine.core.has_unfinished():
        for chunk in engine.core.step().chunks:
            frames[chunk.chunk_index] = chunk.frames
            snapshots[chunk.chunk_index] = chunk.resume_state
    assert snapshots[0].chunks_done == 1 and snapshots[0].anchor is not None
    save_snapshot(snapshots[0], tmp_path / "after-chunk-0.pt")

    fresh = HeliosEngine()
    resumed = dataclasses.replace(spec, resume_path=str(tmp_path / "after-chunk-0.pt"), start_chunk=1)
    request = fresh.core.add_request("resumed", resumed)
    got = {}
    while fresh.core.has_unfinished():
        for chunk in fresh.core.step().chunks:
            got[chunk.chunk_index] = chunk.frames
    assert sorted(got) == [1, 2] and request.status is RequestStatus.FINISHED_COMPLETED
    assert all(np.array_equal(got[k], frames[k]) for k in (1, 2))
    assert request.units_done == request.total_units


class FlopCountingTransformer:
    """Stands in for the runner's transformer: counts every forward with torch's FlopCounterMode."""

    def __init__(self, model):
        self.model, self.config, self.flops = model, model.config, 0

    def __call__(self, **inputs):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode

        # FlopCounterMode has no formula for the CPU flash-attention kernel; the math backend's
        # matmuls it counts.
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            out = self.model(**inputs)
        self.flops += counter.get_total_flops()
        return out

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_engine_counts_the_flops_its_forwards_execute():
    engine = HeliosEngine("helios-tiny-mid")
    runner = engine.core.executor.runner
    runner.transformer = counting = FlopCountingTransformer(runner.transformer)
    engine.generate(["a", "b"], [VideoSamplingParams(num_frames=66, seed=1, **SMALL),
                                 VideoSamplingParams(num_frames=33, seed=2, guidance_scale=1.0, height=128, width=64)])
    assert counting.flops > 0
    assert engine.stats.model_flops == pytest.approx(counting.flops, rel=1e-2)


def test_warm_up_runs_one_chunk_at_the_serving_geometry():
    """The server's warm-up makes the first user request's shapes: the default size and recipe."""
    import asyncio

    from helios_serve.engine.async_engine import AsyncHeliosEngine
    from helios_serve.entrypoints.openai.lifecycle import warm_up

    engine = AsyncHeliosEngine(model="helios-tiny")
    shapes = []
    engine.core.executor.runner.transformer.register_forward_hook(
        lambda module, args, kwargs, output: shapes.append(tuple(kwargs["hidden_states"].shape[-2:])),
        with_kwargs=True)
    try:
        seconds = asyncio.run(warm_up(engine))
    finally:
        engine.shutdown()
    variant = engine.variant
    latent = (variant.default_height // 8, variant.default_width // 8)  # 192x320 for helios-tiny
    # Distilled recipe, amplified first chunk: 2 x (2, 2, 2) forwards at 1/4, 1/2 and full size.
    expected = [(latent[0] // 4, latent[1] // 4)] * 4 + [(latent[0] // 2, latent[1] // 2)] * 4 + [latent] * 4
    assert shapes == expected and seconds > 0


def test_the_runner_refuses_a_unit_its_state_is_not_at():
    """The scheduler owns progress; the plan says which unit, and a runner state that disagrees
    fails that request (loudly, alone) instead of running the wrong unit."""
    from helios_serve.model_executor.model_runner import ModelRunner, RunnerConfig
    from helios_serve.model_executor.step_io import StepPlan, UnitPosition

    runner = ModelRunner(RunnerConfig())
    spec = HeliosEngine(model="helios-tiny").resolve("a fox", VideoSamplingParams(num_frames=33, height=64, width=64))
    runner.execute(StepPlan(encode=[("a", spec), ("b", spec)]))
    runner.execute(StepPlan(begin_chunk=["a", "b"], positions={"a": UnitPosition(0, 0, 0), "b": UnitPosition(0, 0, 0)}))
    # "a" is at step 0 of stage 0; a plan for step 1 (or for a stage transition) is refused.
    result = runner.execute(StepPlan(denoise=["a", "b"],
                                     positions={"a": UnitPosition(0, 0, 1), "b": UnitPosition(0, 0, 0)}))
    assert "planned at UnitPosition(chunk=0, stage=0, step=1)" in result.failed["a"] and "b" not in result.failed
    assert result.num_rows == 1 and "a" not in runner.requests
    result = runner.execute(StepPlan(next_stage=["b"], positions={"b": UnitPosition(0, 1, 0)}))
    assert "next_stage planned" in result.failed["b"]


def test_callers_hold_a_handle_with_consistent_progress_readings(tmp_path):
    """The async engine hands out a handle (id, chunk stream, progress readings taken under the
    engine lock), never the scheduler's live request record; the readings are frozen values."""
    import dataclasses

    from helios_serve.engine.async_engine import RequestHandle, RequestProgress

    async def scenario():
        engine = AsyncHeliosEngine()
        try:
            spec = dataclasses.replace(engine.resolve("a fox", VideoSamplingParams(num_frames=66, seed=3, **SMALL)),
                                       resumable=True)
            handle = engine.add_request(spec, "fox")
            assert isinstance(handle, RequestHandle) and handle.num_chunks == 2
            assert {name for name in vars(handle) if not name.startswith("_")} == {"request_id", "num_chunks"}
            readings = [handle.progress()]
            async for chunk in engine.chunks(handle):
                readings.append(handle.progress())
                if chunk.chunk_index == 0:
                    chunk.resume_state.save(tmp_path / "fox.pt")
            readings.append(handle.progress())
            return engine.resumed(spec, str(tmp_path / "fox.pt")), readings
        finally:
            engine.shutdown()

    resumed, readings = asyncio.run(scenario())
    assert all(isinstance(r, RequestProgress) for r in readings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        readings[0].fraction_done = 1.0
    fractions = [r.fraction_done for r in readings]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert readings[-1].status is RequestStatus.FINISHED_COMPLETED and readings[-1].queue_time_s >= 0
    assert (resumed.start_chunk, resumed.resume_path) == (1, str(tmp_path / "fox.pt"))


class SlowDecoder:
    """Wraps the runner's preview decoder: each decode takes ``seconds`` and notes its thread."""

    def __init__(self, inner, seconds: float):
        self.inner, self.seconds, self.threads = inner, seconds, []

    def decode_frames(self, latents):
        import threading
        import time

        self.threads.append(threading.current_thread().name)
        time.sleep(self.seconds)
        return self.inner.decode_frames(latents)


def _run_collecting(engine, requests, observe=None):
    """Step until done; returns request id -> [(chunk index, frames)] in delivery order."""
    core, out = engine.core, {}
    for request_id, spec in requests:
        core.add_request(request_id, spec)
    while core.has_unfinished():
        step = core.step()
        for chunk in step.chunks:
            out.setdefault(chunk.request_id, []).append((chunk.chunk_index, chunk.frames))
        if observe:
            observe(core)
    return out


def test_decodes_overlap_the_next_chunk_and_give_the_serial_frames():
    from helios_serve.request import Phase

    overlapped, serial = HeliosEngine(max_decodes_in_flight=2), HeliosEngine(max_decodes_in_flight=0)
    slow = SlowDecoder(overlapped.core.executor.runner.preview, 0.3)
    overlapped.core.executor.runner.preview = slow
    specs = [(name, overlapped.resolve(name, VideoSamplingParams(num_frames=99, seed=s, **SMALL)))
             for name, s in (("a fox", 1), ("a lantern", 2))]
    busy_while_decoding, most_in_flight = [], [0]

    def observe(core):
        runner = core.executor.runner
        requests = core.scheduler.running.values()
        most_in_flight[0] = max([most_in_flight[0], *(r.decodes_in_flight for r in requests)])
        if runner.pending_decodes and any(r.phase is not Phase.DRAIN for r in requests):
            busy_while_decoding.append(True)

    got = _run_collecting(overlapped, specs, observe)
    expected = _run_collecting(serial, specs)
    for name, _ in specs:
        assert [k for k, _ in got[name]] == [0, 1, 2]  # in order
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got[name], expected[name]))
    assert set(slow.threads) == {"helios-decode_0"}  # behind the denoising, on the decode thread
    assert busy_while_decoding and 1 <= most_in_flight[0] <= 2


def test_a_cancel_drops_its_pending_decodes():
    engine = HeliosEngine(max_decodes_in_flight=2)
    runner = engine.core.executor.runner
    runner.preview = SlowDecoder(runner.preview, 0.5)
    engine.core.add_request("doomed", engine.resolve("x", VideoSamplingParams(num_frames=330, **SMALL)))
    delivered = []
    while not runner.pending_decodes:
        delivered += engine.core.step().chunks
    engine.core.abort_request("doomed")
    while engine.core.has_unfinished() or runner.pending_decodes:
        delivered += engine.core.step().chunks
    engine.core.step()  # frees the state
    assert runner.pending_decodes == 0 and "doomed" not in runner.requests
    assert all(c.chunk_index == 0 for c in delivered) and len(delivered) <= 1
