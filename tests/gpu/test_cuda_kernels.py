"""The Triton kernels compiled for the GPU, against their PyTorch references, at the 14B geometry."""

from __future__ import annotations

import os

import pytest
import torch

from helios_serve import kernels

# Run with `HELIOS_TEST_CUDA=1 python -m pytest tests/gpu` on a machine with CUDA: the variable keeps
# Triton's interpreter off (tests/conftest.py), so kernels compile for the device. Elsewhere every
# test here is skipped, and counted as skipped.
pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and os.environ.get("HELIOS_TEST_CUDA")),
                                reason="needs a CUDA GPU and HELIOS_TEST_CUDA=1")

WIDTH, HEADS, STAGE2_TOKENS = 5120, 40, 11_040
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}  # as tests/test_kernels.py


def close(actual, expected, dtype):
    torch.testing.assert_close(actual.float(), expected.float(), rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", list(TOLERANCE))
def test_kernels_at_the_14b_stage2_geometry(dtype):
    g = torch.Generator("cuda").manual_seed(0)
    rows = STAGE2_TOKENS
    qkv = torch.randn(rows, 3 * WIDTH, device="cuda", generator=g).to(dtype)
    q, k = qkv[:, :WIDTH], qkv[:, WIDTH : 2 * WIDTH]  # strided rows, as in the model
    table = torch.randn(3, WIDTH, device="cuda", generator=g)
    index = torch.arange(rows, device="cuda", dtype=torch.int32) % 3
    weight, bias = torch.randn(WIDTH, device="cuda", generator=g), torch.randn(WIDTH, device="cuda", generator=g)
    half = WIDTH // HEADS // 2
    cos, sin = torch.rand(rows, half, device="cuda", generator=g), torch.rand(rows, half, device="cuda", generator=g)
    close(kernels.norm_modulate(q, table, table, index, 1e-6), kernels.norm_modulate_ref(q, table, table, index, 1e-6),
          dtype)
    close(kernels.layer_norm(k, weight, bias, 1e-6), kernels.layer_norm_ref(k, weight, bias, 1e-6), dtype)
    close(kernels.gated_residual(q, k, table, index), kernels.gated_residual_ref(q, k, table, index), dtype)
    for ours, reference in zip(kernels.qk_norm_rope(q, k, weight, weight, cos, sin, HEADS, 1e-6),
                               kernels.qk_norm_rope_ref(q, k, weight, weight, cos, sin, HEADS, 1e-6)):
        close(ours, reference, dtype)


def test_qk_norm_rope_past_2_31_elements():
    """13 stage-2 rows of the fused qkv (row stride 15,360): offsets pass 2^31, the int64 path runs."""
    rows = 13 * STAGE2_TOKENS
    g = torch.Generator("cuda").manual_seed(1)
    qkv = torch.randn(rows, 3 * WIDTH, device="cuda", dtype=torch.bfloat16, generator=g)
    q, k = qkv[:, :WIDTH], qkv[:, WIDTH : 2 * WIDTH]
    weight = torch.randn(WIDTH, device="cuda", generator=g)
    half = WIDTH // HEADS // 2
    cos, sin = torch.rand(STAGE2_TOKENS, half, device="cuda", generator=g), torch.rand(
        STAGE2_TOKENS, half, device="cuda", generator=g)
    q_out, k_out = kernels.qk_norm_rope(q, k, weight, weight, cos, sin, HEADS, 1e-6)
    last = slice(rows - STAGE2_TOKENS, rows)  # the rows whose offsets need 64 bits; table rows stay aligned
    q_ref, k_ref = kernels.qk_norm_rope_ref(q[last], k[last], weight, weight, cos, sin, HEADS, 1e-6)
    close(q_out[last], q_ref, torch.bfloat16)
    close(k_out[last], k_ref, torch.bfloat16)
