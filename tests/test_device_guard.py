"""The meta-device guard: what only a GPU would show, seen on a CPU.

Every unit of work (prompt encode, I2V/V2V conditioning, chunk begin, denoising steps, stage
transitions, decode, resume) runs through the real engine with the model and every request
tensor on the ``meta`` device. There, as on CUDA, a CPU tensor of more than 0 dims meeting a
device tensor raises, and so does any data-dependent host read (``.item()``, ``bool(t)``); on
top, ``HostSyncCounter`` asserts that no unit but the decode makes the host wait for the device.
Meta tensors hold no data, so the frames that come back are zeros: this checks devices, not
numbers (the parity tests check numbers).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from helios_serve import HeliosEngine, VideoSamplingParams
from helios_serve.errors import RequestFailedError
from helios_serve.model_executor import request_state
from helios_serve.model_executor.device import HostSyncCounter
from helios_serve.model_executor.resume import save_snapshot
from helios_serve.model_executor.sequence_parallel import Communicator, SequenceParallel
from helios_serve.model_executor.sampling.dmd import _sigma_at

SIZE = dict(height=64, width=64)
IMAGE = np.full((64, 64, 3), 128, dtype=np.uint8)
VIDEO = np.full((40, 64, 64, 3), 64, dtype=np.uint8)
MODES = {"t2v": {}, "i2v": {"image": IMAGE}, "v2v": {"video": VIDEO}}


@pytest.fixture(scope="module")
def meta_engine(tiny_checkpoint):
    """variant -> a HeliosEngine whose transformer, text encoder, VAE and request tensors live on meta."""
    engines = {}

    def get(variant: str, max_decodes_in_flight: int = 2) -> HeliosEngine:
        key = (variant, max_decodes_in_flight)
        if key not in engines:
            _, folder = tiny_checkpoint(variant)
            engines[key] = HeliosEngine(model=str(folder), device="meta", dtype="bfloat16",
                                        max_decodes_in_flight=max_decodes_in_flight)
        return engines[key]

    return get


def _assert_on_meta(engine: HeliosEngine) -> None:
    runner = engine.core.executor.runner
    modules = [runner.transformer, runner.text_encoder.encoder] + ([runner.vae.vae] if runner.vae else [])
    devices = {p.device.type for module in modules for p in module.parameters()}
    assert devices == {"meta"}, devices


def _generate(engine: HeliosEngine, params: VideoSamplingParams, num_chunks: int = 2) -> np.ndarray:
    (video,) = engine.generate(["a lantern in the rain"], params)
    assert video.frames.shape[1:] == (64, 64, 3) and video.num_chunks == num_chunks
    return video.frames


DISTILLED_CASES = [
    (mode, steps, amplify) for mode in MODES for steps in ([1, 1, 1], [2, 2, 2]) for amplify in (True, False)
]


@pytest.mark.parametrize("mode,steps,amplify", DISTILLED_CASES)
def test_distilled_units_run_on_a_device(meta_engine, mode, steps, amplify):
    engine = meta_engine("distilled")
    _assert_on_meta(engine)
    params = VideoSamplingParams(num_frames=66, seed=1, pyramid_num_inference_steps_list=steps,
                                 is_amplify_first_chunk=amplify, **SIZE, **MODES[mode])
    _generate(engine, params)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant,extra", [
    ("mid", dict(pyramid_num_inference_steps_list=[2, 2, 2])),  # CFG-Zero* with zero-init, UniPC per stage
    ("base", dict(num_inference_steps=3)),  # CFG, one-stage UniPC with its corrector
])
def test_guided_units_run_on_a_device(meta_engine, variant, extra, mode):
    engine = meta_engine(variant)
    assert engine.variant.default_guidance_scale > 1  # CFG: two rows per request in every forward
    _generate(engine, VideoSamplingParams(num_frames=66, seed=2, **SIZE, **extra, **MODES[mode]))


def test_builtin_tiny_model_and_preview_decoder_run_on_a_device():
    engine = HeliosEngine(model="helios-tiny", device="meta", dtype="bfloat16")
    _generate(engine, VideoSamplingParams(num_frames=66, seed=3, **SIZE))
    _generate(engine, VideoSamplingParams(num_frames=40, seed=3, decoder="preview", **SIZE))


@pytest.mark.parametrize("variant", ["distilled", "mid", "base"])
def test_resumed_request_runs_on_a_device(meta_engine, variant, tmp_path):
    """A snapshot taken on the device is saved, loaded on the host and restored to the device."""
    engine = meta_engine(variant)
    steps = dict(num_inference_steps=2) if variant == "base" else dict(pyramid_num_inference_steps_list=[1, 1, 1])
    params = VideoSamplingParams(num_frames=99, seed=4, image=IMAGE, **SIZE, **steps)
    spec = dataclasses.replace(engine.resolve("a fox", params), resumable=True)
    first = next(engine.stream_spec(spec))
    assert first.chunk_index == 0 and first.resume_state.history.device.type == "cpu"
    path = tmp_path / "snapshot.pt"
    save_snapshot(first.resume_state, path)
    resumed = dataclasses.replace(spec, resume_path=str(path), start_chunk=1)
    chunks = list(engine.stream_spec(resumed))
    assert [c.chunk_index for c in chunks] == [1, 2]


@pytest.mark.parametrize("overlap", [False, True], ids=["serial-decode", "overlapped-decode"])
@pytest.mark.parametrize("mode", MODES)
def test_no_unit_but_the_decode_waits_for_the_device(meta_engine, mode, overlap):
    """Host syncs per unit, counted on meta where every crossing a GPU would make is visible.
    With the decode overlapped, its syncs happen on the decode thread: the engine thread makes none."""
    engine = meta_engine("distilled", max_decodes_in_flight=2 if overlap else 0)
    params = VideoSamplingParams(num_frames=66, seed=5, pyramid_num_inference_steps_list=[2, 2, 2], **SIZE,
                                 **MODES[mode])
    spec = dataclasses.replace(engine.resolve("a fox", params), resumable=True)
    core = engine.core
    request = core.add_request(f"sync-count-{mode}", spec)
    events_by_unit: dict[str, list[str]] = {}
    while not request.status.is_finished:  # one request: one unit per engine step
        with HostSyncCounter() as counter:
            output = core.step()
        unit = "decode" if output.chunks else "other"
        events_by_unit.setdefault(unit, []).extend(counter.events)
    assert request.error is None
    assert events_by_unit["other"] == [], events_by_unit["other"]
    if overlap:
        assert events_by_unit.get("decode", []) == [], events_by_unit["decode"]
        return
    # Per decoded chunk: the non-finite flag, the frames and the snapshot (history and anchor).
    assert len(events_by_unit["decode"]) == 2 * 4, events_by_unit["decode"]


def test_prompt_schedules_and_live_switches_run_on_a_device(meta_engine):
    """A blended chunk (a transition) and a prompt switched while the request runs: the blend,
    the new prompt's encode and its cross-attention cache entry all live on the device, and no
    unit but the decode makes the host wait."""
    engine = meta_engine("distilled", max_decodes_in_flight=2)
    schedule = [{"from_chunk": 0, "prompt": "a fox"}, {"from_chunk": 1, "prompt": "a heron", "transition_chunks": 2}]
    params = VideoSamplingParams.from_fields(dict(num_frames=132, seed=7, pyramid_num_inference_steps_list=[1, 1, 1],
                                                  prompt_schedule=schedule, **SIZE))
    core = engine.core
    request = core.add_request("switch-on-meta", engine.resolve("a fox", params))
    syncs: list[str] = []
    while not request.status.is_finished:
        if request.chunks_begun == 2 and len(request.spec.prompt_switches) == 1:
            engine.core.executor.prepare_prompt("a lantern")  # what the async front does on a worker thread
            assert core.switch_prompt(request.request_id, "a lantern", transition_chunks=1) == 2
        with HostSyncCounter() as counter:
            output = core.step()
        if not output.chunks:
            syncs.extend(counter.events)
    assert request.error is None and syncs == [], syncs
    assert [s.prompt for s in request.spec.prompt_switches] == ["a heron", "a lantern"]


def _dmd_step_as_shipped(schedule, step, velocity, sample, start):
    """dmd_step as it was before the device fix (a 5-D host tensor times device latents)."""
    timestep = schedule.timesteps[step].to(torch.int64)
    sigma = _sigma_at(schedule, timestep)
    x0 = (sample.double() - sigma * velocity.double()).to(velocity.dtype)
    if step == schedule.num_steps - 1:
        return x0
    next_sigma = _sigma_at(schedule, schedule.timesteps[step + 1].to(torch.int64)).reshape(1, 1, 1, 1, 1)
    return ((1 - next_sigma) * x0 + next_sigma * start).type_as(start)


def test_the_guard_fails_on_the_dmd_step_as_shipped(meta_engine, monkeypatch):
    """The guard catches the bug that kept the server from starting on a GPU."""
    engine = meta_engine("distilled")
    monkeypatch.setattr(request_state, "dmd_step", _dmd_step_as_shipped)
    params = VideoSamplingParams(num_frames=33, seed=6, pyramid_num_inference_steps_list=[2, 2, 2], **SIZE)
    with pytest.raises(RequestFailedError, match="device"):
        engine.generate(["a fox"], params)
    # The same old step is harmless on the CPU, which is why CPU tests never saw it.
    cpu = HeliosEngine(model="helios-tiny")
    cpu.generate(["a fox"], VideoSamplingParams(num_frames=33, seed=6, **SIZE))


class LoopbackCommunicator(Communicator):
    """A group of ``size`` ranks in one process, as if every rank held this rank's tokens: the
    collectives' shapes and devices are the real ones (values do not matter on meta)."""

    def __init__(self, size: int):
        self.group, self.size, self.rank = None, size, 0
        self.bytes_sent = {"all_to_all": 0, "all_gather": 0}

    def all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous().clone()

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x] * self.size)


@pytest.mark.parametrize("variant", ["distilled", "base"])
def test_sequence_parallel_units_run_on_a_device(tiny_checkpoint, variant):
    """The sequence-parallel forward (shares, padding index, all-to-alls, the gather) on meta:
    stage 0 of a 64x64 video has 9 noisy tokens, padded at two ranks; no unit but the decode syncs."""
    _, folder = tiny_checkpoint(variant)
    engine = HeliosEngine(model=str(folder), device="meta", dtype="bfloat16", max_decodes_in_flight=2)
    engine.core.executor.runner.transformer.use_sequence_parallel(SequenceParallel(LoopbackCommunicator(2)))
    steps = dict(num_inference_steps=2) if variant == "base" else dict(pyramid_num_inference_steps_list=[2, 2, 2])
    core = engine.core
    request = core.add_request(f"sp-{variant}", engine.resolve("a fox", VideoSamplingParams(
        num_frames=66, seed=8, image=IMAGE, **SIZE, **steps)))
    syncs: list[str] = []
    while not request.status.is_finished:
        with HostSyncCounter() as counter:
            output = core.step()
        if not output.chunks:
            syncs.extend(counter.events)
    assert request.error is None and syncs == [], (request.error, syncs)
    assert core.executor.runner.transformer.sequence_parallel.communicator.size == 2


def test_the_vae_and_text_encoder_live_on_the_vae_device(tiny_checkpoint):
    """--vae-device: the text encoder and VAE on one device, the transformer and every request
    tensor on the model's; what crosses over (embeddings, I2V conditioning) lands on the model's."""
    from helios_serve.model_executor.step_io import RunnerConfig

    _, folder = tiny_checkpoint("distilled")
    engine = HeliosEngine(model_config=RunnerConfig(model=str(folder), device="meta", dtype="bfloat16",
                                                    vae_device="cpu"))
    runner = engine.core.executor.runner
    placement = {name: {p.device.type for p in module.parameters()} for name, module in runner.modules().items()}
    assert placement == {"transformer": {"meta"}, "text_encoder": {"cpu"}, "vae": {"cpu"}}
    assert runner.encode_prompt("a fox").device.type == "meta"
    state = runner.create_state(engine.resolve("a fox", VideoSamplingParams(num_frames=33, image=IMAGE, **SIZE)))
    assert state.history.device.type == "meta" and state.anchor.device.type == "meta"
