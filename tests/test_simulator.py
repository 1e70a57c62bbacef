"""The accelerator simulator (`serve --simulate h100`): its waits are the cost model's times, in
closed form; its chunks arrive in order behind an overlapped decode; a server runs on it."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from helios_serve.config import EngineConfig
from helios_serve.core.scheduler import Scheduler
from helios_serve.estimate import ModelCosts, Workload, estimate
from helios_serve.hardware import ACCELERATORS
from helios_serve.model_executor.checkpoint import MODEL_ALIASES, official_variant
from helios_serve.model_executor.cost_model import transformer_parameters
from helios_serve.model_executor.config import HELIOS_14B
from helios_serve.request import Request
from helios_serve.sampling_params import VideoSamplingParams
from helios_serve.simulated_executor import (
    DECODE_HIDDEN_FRACTION,
    LIGHT_UNIT_S,
    VAE_EFFICIENCY,
    SimulatedExecutor,
    simulated_variant,
)
from live_server import free_port, start_process, start_server

H100 = ACCELERATORS["h100"]


class VirtualClock:
    """Time that passes only when the simulated GPU sleeps."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(executor: SimulatedExecutor, clock: VirtualClock, specs: list) -> list[tuple[str, int, int]]:
    """The engine's loop (schedule, execute, update) on the simulator; (request, chunk, frames) in delivery order."""
    config = EngineConfig().resolved(executor.num_parameters, executor.decodes_in_background)
    scheduler = Scheduler(config, executor.patch_size, executor.forward_timing())
    for i, spec in enumerate(specs):
        scheduler.add_request(Request(f"r{i}", spec, clock()))
    delivered = []
    while scheduler.num_unfinished:
        plan = scheduler.schedule(clock())
        result = executor.execute(plan)
        scheduler.update_from_output(plan, result, clock())
        assert not result.failed
        delivered += [(c.request_id, c.chunk_index, c.frames.shape[0]) for c in result.chunks]
    return delivered


def distilled_spec(num_frames: int = 99):
    params = VideoSamplingParams(num_frames=num_frames, pyramid_num_inference_steps_list=(1, 1, 1))
    return params.resolve("a fox", official_variant("distilled"), has_vae=True)


def expected_seconds(spec, decode_exposed: list[float]) -> float:
    """Closed form from `estimate`'s FLOP counts: the prompt, every chunk's forwards (the first
    amplified: twice the steps), its stage changes, and each decode's exposed share."""
    work = Workload("distilled", spec.stage_steps, False, True, spec.height, spec.width, spec.num_frames)
    figures = estimate(ModelCosts(), work, H100, mfu=0.5)
    rate = H100.bf16_tflops * 1e12 * 0.5
    fixed = 2 * transformer_parameters(HELIOS_14B) / (H100.memory_tb_s * 1e12) + HELIOS_14B.num_layers * 25 * 5e-6
    forwards = sum(fixed + tflop * 1e12 / rate for tflop in figures["tflop_per_forward"])
    chunks = spec.num_chunks
    seconds = figures["text_encoder_tflop_per_request"] * 1e12 / rate
    seconds += (chunks + 1) * forwards  # chunk 0 runs each stage twice
    seconds += chunks * len(spec.stage_steps) * LIGHT_UNIT_S  # a begin and two stage changes per chunk
    vae = figures["vae_tflop_per_chunk"] * 1e12 / (H100.bf16_tflops * 1e12 * VAE_EFFICIENCY["float32"])
    return seconds + sum(share * vae for share in decode_exposed)


def test_serial_decodes_take_the_cost_models_time():
    clock = VirtualClock()
    executor = SimulatedExecutor("helios-distilled", "h100", 0.5, decode_in_background=False, clock=clock,
                                 sleep=clock.sleep)
    spec = distilled_spec()
    delivered = run(executor, clock, [spec])
    assert delivered == [("r0", 0, 33), ("r0", 1, 33), ("r0", 2, 31)]
    assert clock.now == pytest.approx(expected_seconds(spec, [1.0, 1.0, 1.0]), rel=1e-9)
    assert 5.0 < clock.now < 7.0  # about 1.4 s per chunk on an H100, plus the amplified first chunk


def test_overlapped_decodes_hide_their_share_and_keep_order():
    """Each decode takes (1 - hidden) of its time from the forwards; the last one is waited for in full."""
    clock = VirtualClock()
    executor = SimulatedExecutor("helios-distilled", "h100", 0.5, clock=clock, sleep=clock.sleep)
    spec = distilled_spec()
    delivered = run(executor, clock, [spec])
    assert delivered == [("r0", 0, 33), ("r0", 1, 33), ("r0", 2, 31)]
    exposed = 1 - DECODE_HIDDEN_FRACTION
    assert clock.now == pytest.approx(expected_seconds(spec, [exposed, exposed, 1.0]), rel=1e-9)
    assert executor.pending_decodes == 0 and not executor.specs  # nothing left behind


def test_two_requests_in_arrival_order_share_the_gpu():
    clock = VirtualClock()
    executor = SimulatedExecutor("helios-distilled", "h100", 0.5, decode_in_background=False, clock=clock,
                                 sleep=clock.sleep)
    spec = distilled_spec(33)
    delivered = run(executor, clock, [spec, spec])
    assert [d[0] for d in delivered] == ["r0", "r1"]  # fcfs: a 14B forward never shares cheaply
    alone = expected_seconds(spec, [1.0])
    assert alone * 1.5 < clock.now < alone * 2  # the second's prompt and first stage ran in the first's gaps


def test_unknown_models_and_gpus_are_clear_errors():
    with pytest.raises(ValueError, match="helios-distilled"):
        SimulatedExecutor("helios-tiny", "h100", 0.5)
    with pytest.raises(ValueError, match="h100"):
        SimulatedExecutor("helios-distilled", "v100", 0.5)
    with pytest.raises(ValueError, match="simulate_mfu"):
        EngineConfig(simulate="h100", simulate_mfu=1.5)
    cli = subprocess.run([sys.executable, "-m", "helios_serve.cli", "serve", "helios-distilled", "--simulate", "v100"],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and "invalid choice: 'v100'" in cli.stderr


@pytest.mark.parametrize(("alias", "repo_id"), sorted(MODEL_ALIASES.items()))
def test_a_released_models_repo_id_simulates_its_variant(alias, repo_id):
    assert simulated_variant(repo_id) == simulated_variant(alias) == official_variant(alias.removeprefix("helios-"))


def test_an_unknown_simulated_model_is_one_line_naming_the_accepted_names(tmp_path):
    cli = subprocess.run([sys.executable, "-m", "helios_serve.cli", "serve", "Org/Unreleased", "--simulate", "h100",
                          "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1, cli.stderr
    assert "'Org/Unreleased'" in cli.stderr
    assert all(name in cli.stderr for pair in MODEL_ALIASES.items() for name in pair), cli.stderr


def test_a_server_simulates_a_released_model_named_by_its_repo_id_without_its_weights(tmp_path):
    """`serve BestWishYsh/Helios-Distilled --simulate h100` with an empty Hugging Face cache and the
    Hub forbidden: the repo id names the recipe, nothing is looked up or downloaded."""
    port = free_port()
    repo_id = MODEL_ALIASES["helios-distilled"]
    command = [sys.executable, "-m", "helios_serve.cli", "serve", repo_id, "--simulate", "h100", "--port", str(port),
               "--data-dir", str(tmp_path / "data"), "--log-level", "warning"]
    env = {**os.environ, "HF_HOME": str(tmp_path / "empty-hf-home"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    server = start_process(command, f"http://127.0.0.1:{port}", "/ready", tmp_path / "server.log", env=env,
                           timeout=120, data_dir=tmp_path / "data")
    try:
        assert [model["id"] for model in httpx.get(f"{server.api}/models").json()["data"]] == [repo_id]
        assert httpx.get(f"{server.url}/ready").json()["attention_backend"] == "simulated"
    finally:
        server.stop()


def test_a_server_runs_on_a_simulated_h100(tmp_path):
    """`serve helios-distilled --simulate h100`: no weights, a real server, an MP4 of synthetic frames."""
    server = start_server(tmp_path / "data", "helios-distilled", "--simulate", "h100", timeout=120)
    try:
        ready = httpx.get(f"{server.url}/ready").json()
        assert ready["attention_backend"] == "simulated"
        job = httpx.post(f"{server.api}/videos", json={"prompt": "a fox", "seconds": "1", "size": "320x192",
                                                        "extra_params": {"pyramid_num_inference_steps_list": [1, 1, 1]}})
        assert job.status_code == 200, job.text
        video_id = job.json()["id"]
        with httpx.stream("GET", f"{server.api}/videos/{video_id}/events", timeout=60) as events:
            names = [line[7:] for line in events.iter_lines() if line.startswith("event: ")]
        assert names[-1] == "completed" and "chunk" in names
        content = httpx.get(f"{server.api}/videos/{video_id}/content", timeout=30)
        assert content.status_code == 200 and content.content[4:8] == b"ftyp"
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'helios:device_peak_flops{model_name="helios-distilled"} 9.89e+14' in metrics
    finally:
        server.stop()
