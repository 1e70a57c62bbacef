"""Ulysses sequence parallelism on CPU: real torch.distributed (gloo) processes against one process.

Each rank builds the same seeded model and inputs, runs the forward alone (the reference) and
then split over the group; rank 0 reports the errors and the bytes its collectives sent.
"""

from __future__ import annotations

import dataclasses
import socket

import pytest
import torch
import torch.multiprocessing as mp

from helios_serve.model_executor.config import HELIOS_TINY

# Four heads so that four ranks get one each; every other dimension as the tiny preset.
CONFIG = dataclasses.replace(HELIOS_TINY, num_attention_heads=4, attention_head_dim=16, rope_dim=(6, 6, 4))
HISTORY_HW = (16, 24)
# (batch, noisy latent H, W): the three pyramid stages of a 128x192 video (864, 216 and 54 noisy
# tokens; 240 history: 24 long, 24 mid, 192 short), an odd grid (3 x 5 x 9 = 135 noisy tokens,
# padded at every size) and a batch of two requests at different timesteps.
CASES = [(1, 16, 24), (1, 8, 12), (1, 4, 6), (1, 6, 10), (2, 8, 12)]
TRITON_CASES = [(1, 6, 10)]
"""With the Triton kernels (in Triton's interpreter on a CPU, slow): 135 noisy tokens, padded at two ranks."""
TOLERANCE = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_inputs(batch: int, height: int, width: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)

    def history(frames):
        return torch.randn(batch, 16, frames, *HISTORY_HW, generator=g)

    return dict(
        hidden_states=torch.randn(batch, 16, 9, height, width, generator=g),
        timestep=torch.randint(0, 1000, (batch,), generator=g),
        encoder_hidden_states=torch.randn(batch, 7, CONFIG.text_dim, generator=g),
        latents_history_short=history(2), latents_history_mid=history(2), latents_history_long=history(16),
        indices_hidden_states=torch.arange(20, 29)[None],
        indices_latents_history_short=torch.tensor([[0, 19]]),
        indices_latents_history_mid=torch.arange(17, 19)[None],
        indices_latents_history_long=torch.arange(1, 17)[None],
    )


def _forward_parity(rank: int, size: int, port: int, results, kernels: str = "native") -> None:
    from helios_serve.model_executor.cost_model import forward_token_counts
    from helios_serve.model_executor.loader import random_init
    from helios_serve.model_executor.models.helios_transformer import HeliosTransformer
    from helios_serve.model_executor.sequence_parallel import join_group

    torch.set_num_threads(1)
    group = join_group(rank, size, f"127.0.0.1:{port}", torch.device("cpu"), timeout_s=120)
    with torch.device("meta"):
        model = HeliosTransformer(CONFIG, batch_invariant=True, kernels=kernels)
    random_init(model, seed=0, dtype=torch.float32, device="cpu")
    model.eval()
    report = []
    with torch.inference_mode():
        for case in CASES if kernels == "native" else TRITON_CASES:
            batch, height, width = case
            inputs = make_inputs(batch, height, width, seed=height * 31 + batch)
            model.use_sequence_parallel(None)
            expected = model(**inputs)
            model.use_sequence_parallel(group)
            before = dict(group.communicator.bytes_sent)
            actual = model(**inputs)
            sent = {k: v - before[k] for k, v in group.communicator.bytes_sent.items()}
            error = ((actual - expected).abs().max() / expected.abs().max()).item()
            tokens = forward_token_counts(CONFIG, (height, width), HISTORY_HW)
            report.append({"case": case, "error": error, "sent": sent, "tokens": tokens,
                           "shape_ok": actual.shape == expected.shape})
    if rank == 0:
        results.put(report)
    torch.distributed.destroy_process_group()


def run_ranks(target, size: int, *args) -> list:
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=target, args=(rank, size, port, results, *args))
                 for port in [free_port()] for rank in range(size)]
    for process in processes:
        process.start()
    report = results.get(timeout=300)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return report


@pytest.fixture(scope="module", params=[2, 4], ids=["2-ranks", "4-ranks"])
def parity_report(request):
    return request.param, run_ranks(_forward_parity, request.param)


def test_sequence_parallel_forward_equals_one_process(parity_report):
    size, report = parity_report
    for entry in report:
        print(f"SP{size} batch/H/W {entry['case']}: max relative error {entry['error']:.2e}")
        assert entry["shape_ok"]
        assert entry["error"] <= TOLERANCE, entry


def test_the_triton_kernels_work_on_a_shard():
    for entry in run_ranks(_forward_parity, 2, "triton"):
        print(f"SP2 Triton kernels {entry['case']}: max relative error {entry['error']:.2e}")
        assert entry["error"] <= TOLERANCE, entry


def test_all_to_all_bytes_equal_the_cost_model(parity_report):
    from helios_serve.model_executor.cost_model import sequence_parallel_traffic

    size, report = parity_report
    for entry in report:
        batch = entry["case"][0]
        predicted = sequence_parallel_traffic(CONFIG, entry["tokens"], size, rows=batch, element_bytes=4)
        print(f"SP{size} {entry['case']}: sent {entry['sent']}, model {predicted}")
        assert entry["sent"]["all_to_all"] == predicted["all_to_all"] > 0
        assert entry["sent"]["all_gather"] == predicted["all_gather"] > 0
