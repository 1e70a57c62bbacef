"""The cost model against torch's FlopCounterMode on meta-device models and the published figures
(performance-model.md §0, §3)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helios_serve.model_executor import HeliosTransformer
from helios_serve.model_executor.config import HELIOS_14B, HELIOS_TINY
from helios_serve.model_executor.cost_model import (
    forward_tokens,
    text_encoder_flops,
    text_encoder_parameters,
    transformer_flops,
    transformer_parameters,
    vae_decode_flops,
)
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from helios_serve.estimate import WAN_VAE_PARAMETERS, ModelCosts, Workload, estimate
from helios_serve.hardware import ACCELERATORS

H100 = ACCELERATORS["h100"]


def counted(fn) -> int:
    # FlopCounterMode has no formula for the CPU flash-attention kernel; the math backend's
    # matmuls it counts (meta tensors need neither).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def meta_forward_inputs(batch: int, latent_h: int, latent_w: int, full_h: int, full_w: int, text_dim: int) -> dict:
    def empty(*shape):
        return torch.empty(*shape, device="meta")

    def frames(n):
        return torch.arange(n, device="meta")[None]

    return dict(
        hidden_states=empty(batch, 16, 9, latent_h, latent_w), timestep=torch.full((batch,), 500.0, device="meta"),
        encoder_hidden_states=empty(batch, 512, text_dim),
        latents_history_short=empty(batch, 16, 2, full_h, full_w), indices_latents_history_short=frames(2),
        latents_history_mid=empty(batch, 16, 2, full_h, full_w), indices_latents_history_mid=frames(2),
        latents_history_long=empty(batch, 16, 16, full_h, full_w), indices_latents_history_long=frames(16),
        indices_hidden_states=frames(9),
    )


@pytest.fixture(scope="module")
def meta_14b():
    return HeliosTransformer.from_preset("helios-14b", device="meta", dtype=torch.bfloat16)


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_transformer_flops_match_flop_counter_at_every_pyramid_stage(meta_14b, stage):
    tokens = forward_tokens(HELIOS_14B, 384, 640, 3)[stage]
    side = 2 ** (2 - stage)
    inputs = meta_forward_inputs(1, 48 // side, 80 // side, 48, 80, 4096)
    measured = counted(lambda: meta_14b(**inputs))
    assert transformer_flops(HELIOS_14B, tokens)["total"] == pytest.approx(measured, rel=1e-3)


def test_cfg_rows_cost_twice_one_row(meta_14b):
    tokens = forward_tokens(HELIOS_14B, 384, 640, 3)[0]
    measured = counted(lambda: meta_14b(**meta_forward_inputs(2, 12, 20, 48, 80, 4096)))
    assert 2 * transformer_flops(HELIOS_14B, tokens)["total"] == pytest.approx(measured, rel=1e-3)


def test_tiny_model_flops_and_parameters_match():
    model = HeliosTransformer.from_preset("helios-tiny", device="meta")
    tokens = forward_tokens(HELIOS_TINY, 128, 192, 3)[2]
    inputs = meta_forward_inputs(1, 16, 24, 16, 24, HELIOS_TINY.text_dim)
    assert transformer_flops(HELIOS_TINY, tokens)["total"] == pytest.approx(counted(lambda: model(**inputs)), rel=1e-2)
    assert transformer_parameters(HELIOS_TINY) == sum(p.numel() for p in model.parameters())


def test_parameter_count_of_the_14b_model(meta_14b):
    assert transformer_parameters(HELIOS_14B) == sum(p.numel() for p in meta_14b.parameters())
    assert transformer_parameters(HELIOS_14B) / 1e9 == pytest.approx(14.31, abs=0.005)


def test_vae_decode_flops_and_parameters_match_diffusers():
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        vae = AutoencoderKLWan()
        latents = torch.empty(1, 16, 9, 48, 80)
        measured = counted(lambda: vae.decode(latents))
    assert vae_decode_flops(9, 48, 80) == pytest.approx(measured, rel=1e-3)
    assert sum(p.numel() for p in vae.parameters()) == WAN_VAE_PARAMETERS
    assert vae_decode_flops(9, 48, 80) / 1e12 == pytest.approx(69.3, abs=0.05)  # published


def test_text_encoder_flops_and_parameters_match_transformers_umt5():
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(d_model=4096, num_layers=24, d_ff=10240, num_heads=64, d_kv=64, vocab_size=256384,
                        feed_forward_proj="gated-gelu")
    with torch.device("meta"):
        encoder = UMT5EncoderModel(config)
        measured = counted(lambda: encoder(input_ids=torch.zeros(1, 512, dtype=torch.long)))
    assert text_encoder_flops() == pytest.approx(measured, rel=1e-3)
    assert text_encoder_parameters() == sum(p.numel() for p in encoder.parameters())
    assert text_encoder_flops() / 1e12 == pytest.approx(4.84, abs=0.01)  # published


def distilled(steps=(1, 1, 1), num_frames=264, amplify=True) -> dict:
    return estimate(ModelCosts(), Workload("distilled", steps, False, amplify, num_frames=num_frames), H100, 0.5)


def test_published_token_and_flop_figures():
    result = distilled()
    assert result["history_tokens"] == 2400
    assert result["tokens_per_forward"] == [2940, 4560, 11040]
    assert result["tflop_per_forward"] == pytest.approx([69.7, 119.0, 359.5], abs=0.15)
    assert result["tflop_per_chunk"] == pytest.approx(548.2, rel=1e-3)
    assert result["tflop_per_frame"] == pytest.approx(16.6, abs=0.05)
    assert result["dit_only_fps_per_gpu"] == pytest.approx(29.8, abs=0.1)  # §3.4 at 50% MFU
    assert result["request_tflop"] / 1000 == pytest.approx(5.49, abs=0.01)  # §3.6, 8 chunks amplified
    assert distilled((2, 2, 2))["tflop_per_chunk"] == pytest.approx(1096, rel=1e-3)


def test_published_base_and_mid_chunk_costs():
    base = estimate(ModelCosts(), Workload("base", (50,), True, False), H100, 0.5)
    mid = estimate(ModelCosts(), Workload("mid", (20, 20, 20), True, False), H100, 0.5)
    assert base["tflop_per_chunk"] / 1000 == pytest.approx(35.9, abs=0.1)
    assert base["tflop_per_frame"] == pytest.approx(1089, rel=2e-3)
    assert mid["tflop_per_chunk"] / 1000 == pytest.approx(21.9, abs=0.1)
    assert base["forwards_per_chunk"] == 100 and mid["forwards_per_chunk"] == 120


def test_memory_matches_the_published_budget():
    result = distilled()
    assert result["weights_gib"]["transformer_gib"] == pytest.approx(26.7, abs=0.05)
    assert result["weights_gib"]["text_encoder_gib"] == pytest.approx(10.6, abs=0.05)
    assert result["weights_gib"]["vae_gib"] == pytest.approx(0.47, abs=0.01)
    assert 2.5 <= result["activation_gib_per_row"] <= 3.0
    assert result["memory_headroom_gib"] == pytest.approx(33, abs=1)
    assert 11 <= result["max_requests_per_forward_by_memory"] <= 17
    assert 8 <= result["state_mb_per_stream"] <= 12  # "about 10 MB per stream"


def test_streams_and_gpus_follow_from_frames_per_second():
    work = Workload("distilled", (1, 1, 1), False, False, playback_fps=16)
    result = estimate(ModelCosts(), work, H100, 0.6, streams=5)
    assert result["realtime_factor"] == pytest.approx(result["fps_per_gpu"] / 16)
    assert result["realtime_streams_per_gpu"] == int(result["realtime_factor"]) >= 1
    assert result["gpus_for_streams"] == -(-5 // result["realtime_streams_per_gpu"])
    slow = estimate(ModelCosts(), Workload("base", (50,), True, False), H100, 0.5, streams=2)
    assert slow["realtime_streams_per_gpu"] == 0 and slow["gpus_for_streams"] is None


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "helios_serve.cli", "estimate", *args],
                          capture_output=True, text=True, timeout=120)


def test_estimate_command_prints_json_and_a_report():
    done = run_cli("--model", "helios-distilled", "--gpu", "h100", "--steps", "1,1,1", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for key in ("tflop_per_chunk", "tflop_per_frame", "history_tokens", "tokens_per_forward", "fps_per_gpu",
                "realtime_streams_per_gpu"):
        assert key in result
    assert result["tflop_per_chunk"] == pytest.approx(548.2, rel=1e-3)
    report = run_cli("--model", "helios-base", "--streams", "3")
    assert report.returncode == 0 and "frames/s per GPU" in report.stdout and "GPUs for 3 streams" in report.stdout


@pytest.mark.parametrize("args, message", [
    (("--steps", "1,1"), "--steps needs 3"),
    (("--mfu", "1.5"), "--mfu must be in"),
    (("--model", "helios-tiny"), "is a tiny test model"),
    (("--height", "100"), "multiples of 64"),
])
def test_estimate_command_rejects_bad_values_in_one_line(args, message):
    done = run_cli(*args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_a_checkpoint_directory_is_costed_from_its_own_configs_and_weights(tmp_path):
    from conftest import build_reference_pipeline

    pipe = build_reference_pipeline("distilled")
    pipe.save_pretrained(tmp_path)
    costs = ModelCosts.from_checkpoint(tmp_path)
    assert costs.transformer_parameters == sum(p.numel() for p in pipe.transformer.parameters())
    assert costs.text_encoder_parameters == sum(p.numel() for p in pipe.text_encoder.parameters())
    assert costs.vae_parameters == sum(p.numel() for p in pipe.vae.parameters())
    latents = torch.zeros(1, pipe.vae.config.z_dim, 3, 8, 8)
    with torch.no_grad():
        measured = counted(lambda: pipe.vae.decode(latents))
    assert vae_decode_flops(3, 8, 8, costs.vae) == pytest.approx(measured, rel=1e-3)
    tokens = torch.zeros(1, 512, dtype=torch.long)
    with torch.no_grad():
        measured = counted(lambda: pipe.text_encoder(input_ids=tokens))
    assert text_encoder_flops(config=costs.text_encoder) == pytest.approx(measured, rel=1e-3)
    done = run_cli("--model", str(tmp_path), "--height", "128", "--width", "128", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["weights_gib"]["vae_gib"] == pytest.approx(4 * costs.vae_parameters / 2**30)


def test_cuda_device_names_find_their_datasheet_entry():
    from helios_serve.hardware import accelerator_for_device_name

    assert accelerator_for_device_name("NVIDIA H100 80GB HBM3") is ACCELERATORS["h100"]
    assert accelerator_for_device_name("NVIDIA H100 PCIe") is ACCELERATORS["h100pcie"]
    assert accelerator_for_device_name("NVIDIA H200") is ACCELERATORS["h200"]
    assert accelerator_for_device_name("NVIDIA H20") is ACCELERATORS["h20"]
    assert accelerator_for_device_name("NVIDIA GeForce RTX 4090") is None
