"""Compile every Triton kernel for an H100 (sm_90) on this machine, no GPU needed; print JSON.

Run as a script in a process without TRITON_INTERPRET (the interpreter replaces @triton.jit at
import). Each kernel is compiled with the launch configuration its launcher uses at the 14B
width (5120; 40 heads of 128 for q/k), int32 and int64 offsets, to a cubin by Triton's own
ptxas; cuobjdump then reports registers, local memory (spills) and shared memory per kernel.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from helios_serve.kernels.gated_residual import _gated_residual_kernel
from helios_serve.kernels.layer_norm import _layer_norm_kernel
from helios_serve.kernels.norm_modulate import _norm_modulate_kernel
from helios_serve.kernels.qk_norm_rope import _qk_norm_rope_kernel
from helios_serve.kernels.utils import block_size, num_warps

WIDTH, HEADS = 5120, 40
GATED_BLOCK = 1024  # gated_residual tiles rows by 1024 with 4 warps


def configs():
    """(name, kernel, signature, constexprs, num_warps), the launchers' choices at WIDTH."""
    row_block = block_size(WIDTH)
    pair_block = block_size(WIDTH // 2)
    act, table, index, i32, f32 = "*bf16", "*fp32", "*i32", "i32", "fp32"
    for wide in (False, True):
        yield ("norm_modulate", _norm_modulate_kernel,
               dict(X=act, Y=act, SHIFT=table, SCALE=table, INDEX=index, stride_x=i32, stride_table=i32, N=i32,
                    eps=f32), dict(BLOCK=row_block, WIDE=wide), num_warps(row_block))
        yield ("layer_norm", _layer_norm_kernel,
               dict(X=act, Y=act, W=table, B=table, stride_x=i32, N=i32, eps=f32),
               dict(BLOCK=row_block, WIDE=wide), num_warps(row_block))
        yield ("gated_residual", _gated_residual_kernel,
               dict(H=act, Y=act, OUT=act, GATE=table, INDEX=index, stride_h=i32, stride_y=i32, stride_gate=i32,
                    N=i32), dict(BLOCK=GATED_BLOCK, WIDE=wide), 4)
        yield ("qk_norm_rope", _qk_norm_rope_kernel,
               dict(Q=act, K=act, QO=act, KO=act, WQ=act, WK=act, COS=table, SIN=table, stride_q=i32, stride_k=i32,
                    table_rows=i32, D=i32, eps=f32),
               dict(HALF_HEAD=WIDTH // HEADS // 2, BLOCK=pair_block, WIDE=wide), num_warps(pair_block))


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, LOCAL (spill bytes per thread), SHARED, STACK from cuobjdump --dump-resource-usage."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True).stdout
    line = next(line for line in text.splitlines() if "REG:" in line)
    fields = dict(item.split(":", 1) for item in line.split() if ":" in item)
    return {key: int(fields[key]) for key in ("REG", "LOCAL", "SHARED", "STACK")}


def row_offset_bits(ttir: str) -> list[int]:
    """Integer widths of the ``row * stride`` products in the kernel's Triton IR."""
    products = [line.split(" loc(")[0] for line in ttir.splitlines() if re.search(r"arith\.muli %row", line)]
    return sorted({64 if line.endswith("i64") else 32 for line in products})


def main() -> None:
    if os.environ.get("TRITON_INTERPRET"):
        sys.exit("run without TRITON_INTERPRET: the interpreter does not compile")
    target = GPUTarget("cuda", 90, 32)
    results = []
    for name, kernel, signature, constexprs, warps in configs():
        source = ASTSource(fn=kernel, signature={**signature, **{k: "constexpr" for k in constexprs}},
                           constexprs=constexprs)
        compiled = triton.compile(source, target=target, options={"num_warps": warps})
        results.append({"kernel": name, "wide": constexprs["WIDE"], "block": constexprs["BLOCK"], "num_warps": warps,
                        "row_offset_bits": row_offset_bits(compiled.asm["ttir"]),
                        **resource_usage(compiled.asm["cubin"])})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
