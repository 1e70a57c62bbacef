"""Every Triton kernel against its plain-PyTorch reference (CPU: Triton's interpreter).

Shapes include odd sizes, non-powers of two and the 14B width (5120 = 40 heads x 128) with a
few tokens, and row counts that are not a multiple of the rows a program handles (the last
program's tail is masked); inputs include strided rows (column slices of a wider tensor, as q
and k are of the fused qkv output). Table indices come both cyclic (every row its own table row)
and in the model's runs (a sample's history rows, then its noisy rows), whose boundaries fall
inside programs. The Triton interpreter computes in numpy, so bf16 and fp16 work here.
Tolerances: fp32 results differ from the reference only by summation order (~1e-6 relative);
bf16/fp16 outputs are rounded once from the same fp32 value, so they agree to one unit in the
last place (bf16 8 bits: 1e-2 relative; fp16 11 bits: 1e-3).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from helios_serve import kernels  # noqa: E402
from helios_serve.model_executor import HeliosTransformer  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Rows per program (utils.launch_config): 16 at 64, 4 at 300, 2 at 769, 1 at 5120 and 5125 (2 for
# the gated residual's 1024-column tiles): every case but (1, 64)'s single program has a partial one.
ROWS_WIDTHS = [(1, 64), (19, 64), (7, 300), (33, 769), (3, 5120), (5, 5120), (2, 5125)]
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-2, 1e-2), torch.float16: (1e-3, 1e-3)}
DTYPES = list(TOLERANCE)


def table_index(rows: int, kind: str) -> torch.Tensor:
    """int32 table rows: "cyclic" 0, 1, 2, 0, ... (neighbours differ; the lowest entry of a program
    is not always its first row); "segments" the model's 2 b + is_noisy over samples of 5 history
    then 6 noisy rows."""
    row = torch.arange(rows)
    if kind == "cyclic":
        index = row % 3
    else:
        sample, position = row // 11, row % 11
        index = 2 * sample + (position >= 5)
    return index.to(device=DEVICE, dtype=torch.int32)


def make(rows, width, dtype, strided, seed=0):
    g = torch.Generator().manual_seed(seed)
    full = torch.randn(rows, width + (17 if strided else 0), generator=g)
    x = full[:, 3 : 3 + width] if strided else full
    return x.to(device=DEVICE, dtype=dtype)


def close(actual, expected, dtype):
    rtol, atol = TOLERANCE[dtype]
    assert actual.dtype == expected.dtype == dtype
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("index_kind", ["cyclic", "segments"])
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,width", ROWS_WIDTHS)
def test_norm_modulate(rows, width, dtype, strided, index_kind):
    x = make(rows, width, dtype, strided)
    index = table_index(rows, index_kind)
    shift, scale = (torch.randn(int(index.max()) + 1, width, device=DEVICE) for _ in range(2))
    close(kernels.norm_modulate(x, shift, scale, index, 1e-6), kernels.norm_modulate_ref(x, shift, scale, index, 1e-6),
          dtype)


@pytest.mark.parametrize("index_kind", ["cyclic", "segments"])
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,width", ROWS_WIDTHS)
def test_gated_residual(rows, width, dtype, strided, index_kind):
    h, y = make(rows, width, dtype, strided, 1), make(rows, width, dtype, strided, 2)
    index = table_index(rows, index_kind)
    gate = torch.randn(int(index.max()) + 1, width, device=DEVICE)
    close(kernels.gated_residual(h, y, gate, index), kernels.gated_residual_ref(h, y, gate, index), dtype)


@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,width", ROWS_WIDTHS)
def test_layer_norm(rows, width, dtype, strided):
    x = make(rows, width, dtype, strided)
    weight, bias = torch.randn(width, device=DEVICE), torch.randn(width, device=DEVICE)
    close(kernels.layer_norm(x, weight, bias, 1e-6), kernels.layer_norm_ref(x, weight, bias, 1e-6), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,heads,head_dim,table_rows", [(3, 40, 128, 3), (12, 2, 32, 4), (7, 3, 6, 7), (5, 1, 2, 1)])
def test_qk_norm_rope(rows, heads, head_dim, table_rows, dtype):
    width = heads * head_dim
    qkv = make(rows, 3 * width, dtype, strided=False)
    q, k = qkv[:, :width], qkv[:, width : 2 * width]  # strided rows, as in the model
    angles = torch.rand(table_rows, head_dim // 2, device=DEVICE) * 30
    weight_q, weight_k = torch.randn(width, device=DEVICE).to(dtype), torch.randn(width, device=DEVICE).to(dtype)
    got = kernels.qk_norm_rope(q, k, weight_q, weight_k, angles.cos(), angles.sin(), heads, 1e-6)
    want = kernels.qk_norm_rope_ref(q, k, weight_q, weight_k, angles.cos(), angles.sin(), heads, 1e-6)
    for actual, expected in zip(got, want):
        close(actual, expected, dtype)


@pytest.mark.parametrize("width,element_size", [(5120, 2), (5125, 4), (64, 2), (300, 4), (769, 2), (2048, 2)])
def test_launch_config_keeps_each_thread_to_whole_vectors_and_few_registers(width, element_size):
    from helios_serve.kernels.utils import ELEMENTS_PER_THREAD, VECTOR_BYTES, launch_config

    config = launch_config(width, element_size)
    assert config.block >= width and config.block & (config.block - 1) == 0  # one power-of-two block: the row
    assert config.rows_per_program & (config.rows_per_program - 1) == 0  # a tl.arange extent
    per_thread = config.rows_per_program * config.block // (32 * config.num_warps)
    assert per_thread * element_size >= VECTOR_BYTES  # at least one 16-byte load a thread
    assert per_thread <= ELEMENTS_PER_THREAD or config.num_warps == 16  # more only when at the warp limit


def test_launch_config_choices_at_the_14b_width_and_narrow_rows():
    from helios_serve.kernels.utils import launch_config

    wide = launch_config(5120, 2)
    assert wide.block == 8192 and wide.rows_per_program == 1 and 8 <= wide.num_warps <= 16
    assert launch_config(5120, 4) == wide  # fp32 rows: the same lanes, 16 fp32 values a thread
    assert launch_config(64, 2).rows_per_program == 16 and launch_config(64, 2).num_warps < wide.num_warps
    assert [launch_config(w, 2).rows_per_program for w in (256, 512, 1024, 2048)] == [8, 4, 2, 1]
    tile = launch_config(5120, 2, whole_row=False)  # elementwise: 5 tiles of 1024, two rows a program
    assert tile.block == 1024 and 5120 % tile.block == 0 and tile.rows_per_program == 2
    assert launch_config(64, 2, max_rows_per_program=1).rows_per_program == 1


def test_qk_reference_is_the_models_native_path():
    """The fused op's reference equals RMSNorm then the model's own RoPE application."""
    from helios_serve.model_executor.layers.norm import RMSNorm
    from helios_serve.model_executor.layers.rotary import RotaryTable, apply_rotary

    q, k = torch.randn(6, 64), torch.randn(6, 64)
    angles = torch.rand(6, 16) * 10
    norm_q, norm_k = RMSNorm(64, 1e-6), RMSNorm(64, 1e-6)
    with torch.no_grad():
        norm_q.weight.normal_(), norm_k.weight.normal_()
    table = RotaryTable(angles.cos()[None], angles.sin()[None])
    native_q = apply_rotary(norm_q(q[None]).unflatten(-1, (2, -1)), table).flatten(2)[0]
    ref_q, _ = kernels.qk_norm_rope_ref(q, k, norm_q.weight, norm_k.weight, angles.cos(), angles.sin(), 2, 1e-6)
    torch.testing.assert_close(ref_q, native_q, rtol=1e-6, atol=1e-6)


def test_launchers_check_their_inputs():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="float32"):
        kernels.norm_modulate(x, torch.zeros(1, 8, dtype=torch.float16), torch.zeros(1, 8), torch.zeros(4, dtype=torch.int32), 1e-6)
    with pytest.raises(ValueError, match="int32"):
        kernels.gated_residual(x, x, torch.zeros(1, 8), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="contiguous along its last"):
        kernels.layer_norm(torch.randn(8, 4).t(), torch.ones(8), torch.zeros(8), 1e-6)
    with pytest.raises(ValueError, match="heads"):
        kernels.qk_norm_rope(x, x, torch.ones(8), torch.ones(8), torch.ones(4, 1), torch.ones(4, 1), 3, 1e-6)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_tiny_transformer_triton_matches_native(dtype, tolerance):
    """The whole model: kernels chosen at construction, two requests at different timesteps."""
    native = HeliosTransformer.from_preset("helios-tiny", dtype=dtype, kernels="native")
    fused = HeliosTransformer.from_preset("helios-tiny", dtype=dtype, kernels="triton")
    assert fused.ops.name == "triton" and native.ops.name == "native"
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    inputs = dict(
        hidden_states=rand(2, 16, 9, 4, 4), timestep=torch.tensor([998, 385]), encoder_hidden_states=rand(2, 7, 64),
        latents_history_short=rand(2, 16, 2, 8, 8), latents_history_mid=rand(2, 16, 2, 8, 8),
        latents_history_long=rand(2, 16, 16, 8, 8), indices_hidden_states=torch.arange(20, 29)[None],
        indices_latents_history_short=torch.tensor([[0, 19]]), indices_latents_history_mid=torch.tensor([[17, 18]]),
        indices_latents_history_long=torch.arange(1, 17)[None],
    )
    with torch.inference_mode():
        expected, actual = native(**inputs), fused(**inputs)
    error = ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()
    print(f"triton vs native, {dtype}: {error:.2e}")
    assert error <= tolerance
