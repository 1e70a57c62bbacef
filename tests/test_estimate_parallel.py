"""The cost model of Ulysses sequence parallelism and of a VAE GPU (`estimate --sequence-parallel-size N
--vae-gpu`): closed-form traffic, per-rank FLOPs, and the estimate's report. Predictions only: no
multi-GPU run has been made."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from helios_serve.model_executor.config import HELIOS_14B, get_preset
from helios_serve.model_executor.cost_model import (
    forward_tokens,
    sequence_parallel_flops,
    sequence_parallel_traffic,
    transformer_flops,
)

from helios_serve.cli import main
from helios_serve.estimate import ModelCosts, Workload, estimate, sequence_parallel_sizes
from helios_serve.hardware import ACCELERATORS

H100 = ACCELERATORS["h100"]
TINY = get_preset("helios-tiny")  # 2 heads x 32 = D 64, 2 layers, out 16 x (1 x 2 x 2) = 64
TINY_4_HEADS = dataclasses.replace(TINY, num_attention_heads=4)  # D 128: Ulysses over 4 ranks needs 4 heads
# Counts that no rank count divides, so every term is padded.
ODD = {"long": 7, "mid": 5, "short": 9, "noisy": 11, "history": 21, "total": 32}


def test_traffic_of_two_ranks_in_closed_form():
    # ceil(n / 2) of each term: 4 + 3 + 5 + 6 = 18 tokens on a rank (one of them padding in each term).
    traffic = sequence_parallel_traffic(TINY, ODD, 2)
    assert traffic["local_tokens"] == 18
    # 2 layers x (q, k, v + the output = 4) x 1 row x 18 tokens x D 64 x 2 bytes, half of it kept.
    assert traffic["all_to_all"] == 2 * 4 * 1 * 18 * 64 * 2 // 2 == 9216
    # The noisy share (6) x out 64 x 2 bytes to the one other rank.
    assert traffic["all_gather"] == 6 * 64 * 2 * 1 == 768
    assert traffic["collectives"] == 2 * 2 + 1


def test_traffic_of_four_ranks_and_two_rows_in_closed_form():
    # ceil(n / 4): 2 + 2 + 3 + 3 = 10 tokens on a rank.
    traffic = sequence_parallel_traffic(TINY_4_HEADS, ODD, 4, rows=2)
    assert traffic["local_tokens"] == 10
    assert traffic["all_to_all"] == 2 * 4 * 2 * 10 * 128 * 2 * 3 // 4 == 30720  # 3/4 leaves the rank
    assert traffic["all_gather"] == 2 * 3 * 64 * 2 * 3 == 2304
    assert traffic["collectives"] == 5
    fp32 = sequence_parallel_traffic(TINY_4_HEADS, ODD, 4, rows=2, element_bytes=4)
    assert (fp32["all_to_all"], fp32["all_gather"]) == (2 * 30720, 2 * 2304)


def test_one_rank_sends_nothing():
    assert sequence_parallel_traffic(TINY, ODD, 1, rows=2) == {
        "all_to_all": 0, "all_gather": 0, "collectives": 0, "local_tokens": 32}


def test_traffic_of_the_14b_model_matches_the_reviews_arithmetic():
    """gpu-review.md, Ulysses: 113 MB per layer at 2 ranks and 85 MB at 4 for the last stage."""
    last = forward_tokens(HELIOS_14B, 384, 640, 3)[2]
    assert sequence_parallel_traffic(HELIOS_14B, last, 2)["all_to_all"] / 40 / 1e6 == pytest.approx(113, abs=0.5)
    assert sequence_parallel_traffic(HELIOS_14B, last, 4)["all_to_all"] / 40 / 1e6 == pytest.approx(85, abs=0.5)


def test_ranks_must_divide_the_heads():
    with pytest.raises(ValueError, match="2 attention heads"):
        sequence_parallel_traffic(TINY, ODD, 4)
    with pytest.raises(ValueError, match="40 attention heads"):
        sequence_parallel_flops(HELIOS_14B, ODD, 3)
    assert sequence_parallel_sizes(HELIOS_14B) == [1, 2, 4, 5, 8]


@pytest.mark.parametrize("config, tokens", [
    (TINY, ODD), *((HELIOS_14B, stage) for stage in forward_tokens(HELIOS_14B, 384, 640, 3)),
])
def test_one_rank_computes_the_whole_forward(config, tokens):
    assert sequence_parallel_flops(config, tokens, 1) == transformer_flops(config, tokens)


def test_a_ranks_share_in_closed_form():
    d, ffn, layers, text = 64, 128, 2, 512
    whole, rank = transformer_flops(TINY, ODD), sequence_parallel_flops(TINY, ODD, 2)
    assert rank["self_attention"] == whole["self_attention"] // 2 == layers * 4 * 32 * 32 * d // 2
    assert rank["ffn"] == layers * 2 * 18 * d * 2 * ffn  # 18 padded local tokens
    assert rank["cross_attention"] == layers * (4 * 6 * d * d + 4 * text * d * d + 4 * 6 * text * d)  # 6 noisy
    assert rank["head"] == 2 * 6 * d * 64
    assert rank["embeddings"] == whole["embeddings"]  # replicated


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_two_ranks_each_do_more_than_half(stage):
    tokens = forward_tokens(HELIOS_14B, 384, 640, 3)[stage]
    whole = transformer_flops(HELIOS_14B, tokens)["total"]
    assert whole / 2 < sequence_parallel_flops(HELIOS_14B, tokens, 2)["total"] < whole
    assert whole / 4 < sequence_parallel_flops(HELIOS_14B, tokens, 4)["total"] < whole / 2


def distilled(**group) -> dict:
    return estimate(ModelCosts(), Workload("distilled", (1, 1, 1), False, True), H100, 0.5, streams=8, **group)


def test_one_gpu_is_the_estimate_it_always_was():
    result = distilled()
    assert result["gpus_per_group"] == 1 and result["fps_per_stream"] == pytest.approx(result["fps_per_gpu"])
    assert result["all_to_all_gb_per_forward"] == [0, 0, 0] and result["communication_s_per_chunk"] == 0
    rate = H100.bf16_tflops * 0.5
    chunk_tflop = result["tflop_per_chunk"] + result["vae_tflop_per_chunk"]
    assert result["seconds_per_chunk"] == pytest.approx(chunk_tflop / rate)
    assert result["fps_per_gpu"] == pytest.approx(result["num_frames"] / (result["request_tflop"] / rate))
    assert result["realtime_streams_per_gpu"] == 0 and result["gpus_for_streams"] is None  # 23.5 frames/s < 24
    assert result["smallest_realtime_sequence_parallel"] == {"without_vae_gpu": 2, "with_vae_gpu": 1}


def test_a_forward_on_ranks_costs_its_share_plus_sends_and_latencies():
    result = distilled(sequence_parallel_size=2)
    rate = H100.bf16_tflops * 1e12 * 0.5
    seconds = 0.0
    for tokens in forward_tokens(HELIOS_14B, 384, 640, 3):  # one step per stage
        traffic = sequence_parallel_traffic(HELIOS_14B, tokens, 2)
        seconds += sequence_parallel_flops(HELIOS_14B, tokens, 2)["total"] / rate
        seconds += (traffic["all_to_all"] + traffic["all_gather"]) / (H100.interconnect_gb_s * 1e9)
        seconds += traffic["collectives"] * H100.collective_latency_us * 1e-6
    assert result["dit_seconds_per_chunk"] == pytest.approx(seconds, rel=1e-12)
    assert result["seconds_per_chunk"] == pytest.approx(seconds + result["vae_seconds_per_chunk"])  # decode after


def test_a_vae_gpu_overlaps_the_decode_and_adds_a_gpu():
    alone, split = distilled(sequence_parallel_size=2), distilled(sequence_parallel_size=2, vae_gpu=True)
    assert split["gpus_per_group"] == 3 and split["dit_seconds_per_chunk"] == alone["dit_seconds_per_chunk"]
    assert split["seconds_per_chunk"] == max(split["dit_seconds_per_chunk"], split["vae_seconds_per_chunk"])
    assert split["fps_per_stream"] > alone["fps_per_stream"] > distilled()["fps_per_stream"]
    per_group = split["realtime_streams_per_group"]
    assert per_group == math.floor(split["fps_per_stream"] / 24) >= 1
    assert split["gpus_for_streams"] == math.ceil(8 / per_group) * 3
    assert split["memory_headroom_gib"] > alone["memory_headroom_gib"]  # no text encoder or VAE on DiT GPUs


def estimate_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["estimate", "--model", "helios-distilled", "--gpu", "h100", "--steps", "1,1,1", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_estimate_command_with_two_ranks_and_a_vae_gpu(capsys):
    code, out, _ = estimate_cli(capsys, "--streams", "8", "--json")
    one = json.loads(out)
    code, out, _ = estimate_cli(capsys, "--sequence-parallel-size", "2", "--vae-gpu", "--streams", "8", "--json")
    group = json.loads(out)
    assert code == 0 and group["sequence_parallel_size"] == 2 and group["vae_gpu"]
    assert isinstance(group["gpus_for_streams"], int) and group["gpus_for_streams"] % 3 == 0
    assert group["fps_per_stream"] > one["fps_per_stream"]
    code, report, _ = estimate_cli(capsys, "--sequence-parallel-size", "2", "--vae-gpu", "--streams", "8")
    assert code == 0
    assert f"GPUs for 8 streams      {group['gpus_for_streams']} (" in report
    assert f"frames/s per stream     {group['fps_per_stream']:.2f}" in report
    assert "all-to-all sends" in report and "81 collectives" in report and "assumed" in report


def test_estimate_command_names_the_groups_that_would_keep_up(capsys):
    code, report, _ = estimate_cli(capsys, "--streams", "8")
    assert code == 0 and "none suffice" in report
    hint = "real time needs         --sequence-parallel-size 2 (2 GPUs) or --sequence-parallel-size 1 --vae-gpu"
    assert hint in report


def test_estimate_command_rejects_a_size_that_does_not_divide_the_heads(capsys):
    code, out, err = estimate_cli(capsys, "--sequence-parallel-size", "3")
    assert code == 2 and not out
    assert err.startswith("helios-serve: error: --sequence-parallel-size must divide the model's 40 attention heads")
    assert "1, 2, 4, 5, 8; got 3" in err and len(err.strip().splitlines()) == 1
