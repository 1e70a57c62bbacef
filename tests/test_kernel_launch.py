"""Launch safety of the Triton kernels at 14B scale, checked without a GPU.

* The int32/int64 offset decision (no tensor past 2^31 elements fits here, so the decision
  is tested, and the int64 code path is run in the interpreter against the references).
* Every kernel compiled for an H100 (sm_90) by Triton's own ptxas at the launch configuration
  its launcher picks at width 5120 (and 1024 for the row kernels, two rows a program): no
  register spills, registers within the SM's file, row offsets computed in 64 bits exactly
  when the launcher asks for it, and every bf16 load and store a vector.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from helios_serve import kernels  # noqa: E402
from helios_serve.kernels import utils  # noqa: E402

STAGE2_TOKENS, QKV_STRIDE, WIDTH = 11_040, 3 * 5120, 5120
REGISTERS_PER_SM = 65_536


def test_int64_offsets_from_13_stage2_rows_of_the_fused_qkv():
    assert not utils.wide_offsets(12 * STAGE2_TOKENS, QKV_STRIDE, QKV_STRIDE, WIDTH)
    assert utils.wide_offsets(13 * STAGE2_TOKENS, QKV_STRIDE, QKV_STRIDE, WIDTH)
    # The exact threshold: the last row's offset reaches 2^31.
    limit_rows = (2**31 - 1) // QKV_STRIDE
    assert not utils.wide_offsets(limit_rows, QKV_STRIDE) and utils.wide_offsets(limit_rows + 1, QKV_STRIDE)
    # Contiguous [rows, 5120] activations (norms, residual) stay int32 up to 37 stage-2 rows.
    assert not utils.wide_offsets(37 * STAGE2_TOKENS, WIDTH) and utils.wide_offsets(38 * STAGE2_TOKENS, WIDTH)


def test_int64_code_path_matches_the_references(monkeypatch):
    """The kernels with int64 offsets forced on (interpreter on CPU) equal their references."""
    monkeypatch.setattr(utils, "wide_offsets", lambda rows, *strides: True)
    g = torch.Generator().manual_seed(0)
    rows, width, heads = 6, 256, 4
    wide = torch.randn(rows, 3 * width, generator=g)
    q, k = wide[:, :width], wide[:, width : 2 * width]  # strided rows, as slices of the fused qkv
    table = torch.randn(3, width, generator=g)
    index = torch.arange(rows, dtype=torch.int32) % 3
    weight, bias = torch.randn(width, generator=g), torch.randn(width, generator=g)
    cos, sin = torch.randn(2, width // heads // 2, generator=g), torch.randn(2, width // heads // 2, generator=g)
    pairs = [
        (kernels.norm_modulate(q, table, table, index, 1e-6), kernels.norm_modulate_ref(q, table, table, index, 1e-6)),
        (kernels.layer_norm(k, weight, bias, 1e-6), kernels.layer_norm_ref(k, weight, bias, 1e-6)),
        (kernels.gated_residual(q, k, table, index), kernels.gated_residual_ref(q, k, table, index)),
        *zip(kernels.qk_norm_rope(q, k, weight, bias, cos, sin, heads, 1e-6),
             kernels.qk_norm_rope_ref(q, k, weight, bias, cos, sin, heads, 1e-6)),
    ]
    for actual, expected in pairs:
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def sm90_builds():
    """Every kernel compiled for sm_90 in a process without TRITON_INTERPRET (tests/_compile_kernels.py)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("_compile_kernels.py")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_every_kernel_compiles_for_h100_without_spills(sm90_builds):
    assert {b["kernel"] for b in sm90_builds} == {"norm_modulate", "layer_norm", "gated_residual", "qk_norm_rope"}
    for build in sm90_builds:
        threads = 32 * build["num_warps"]
        assert build["LOCAL"] == 0 and build["STACK"] == 0, build  # nothing spilled to local memory
        assert build["REG"] <= 255 and build["REG"] * threads <= REGISTERS_PER_SM, build  # one program fits an SM
        assert build["SHARED"] <= 48 * 1024, build  # within the default dynamic shared memory


def test_every_activation_access_is_vectorised(sm90_builds):
    """No single-bf16 global load or store (the stride-2 even/odd loads of the earlier q/k
    kernel had 32 a thread); the launch configurations the launchers pick are the ones compiled."""
    assert all(build["scalar_16bit_accesses"] == 0 for build in sm90_builds), sm90_builds
    assert {(b["kernel"], b["block"], b["rows_per_program"], b["num_warps"]) for b in sm90_builds} >= {
        ("norm_modulate", 8192, 1, 16), ("layer_norm", 8192, 1, 16), ("gated_residual", 1024, 2, 4),
        ("qk_norm_rope", 8192, 1, 16), ("norm_modulate", 1024, 2, 4),
    }


def test_row_offsets_are_64_bit_exactly_when_asked(sm90_builds):
    for build in sm90_builds:
        assert build["row_offset_bits"] == ([64] if build["wide"] else [32]), build
