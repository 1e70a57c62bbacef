"""Compile every Triton kernel for an H100 (sm_90) on this machine, no GPU needed; print JSON.

Run as a script in a process without TRITON_INTERPRET (the interpreter replaces @triton.jit at
import). Each kernel is compiled with the launch configuration its launcher uses at the 14B
width (5120; 40 heads of 128 for q/k) and, for the row kernels, at 1024 (two rows a program),
int32 and int64 offsets, specialised as the runtime specialises a launch at that geometry
(16-byte aligned pointers, strides divisible by 16), to a cubin by Triton's own
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
from helios_serve.kernels.utils import block_size, launch_config

WIDTH, HEADS = 5120, 40
NARROW_WIDTH = 1024
"""Also compiled: the widest row the launchers pack several to a program (2 rows of 1024)."""


def configs():
    """(name, kernel, signature, constexprs, launch config), the launchers' choices at WIDTH (and
    NARROW_WIDTH for the row kernels) for bf16 activations."""
    act, table, index, i32, f32 = "*bf16", "*fp32", "*i32", "i32", "fp32"
    bf16_size = 2
    for wide in (False, True):
        for width in (WIDTH, NARROW_WIDTH):
            row = launch_config(width, bf16_size)
            tile = launch_config(width, bf16_size, whole_row=False)
            yield ("norm_modulate", _norm_modulate_kernel,
                   dict(X=act, Y=act, SHIFT=table, SCALE=table, INDEX=index, n_rows=i32, stride_x=i32,
                        stride_table=i32, N=i32, eps=f32),
                   dict(BLOCK=row.block, ROWS=row.rows_per_program, WIDE=wide), row)
            yield ("layer_norm", _layer_norm_kernel,
                   dict(X=act, Y=act, W=table, B=table, n_rows=i32, stride_x=i32, N=i32, eps=f32),
                   dict(BLOCK=row.block, ROWS=row.rows_per_program, WIDE=wide), row)
            yield ("gated_residual", _gated_residual_kernel,
                   dict(H=act, Y=act, OUT=act, GATE=table, INDEX=index, n_rows=i32, stride_h=i32, stride_y=i32,
                        stride_gate=i32, N=i32),
                   dict(BLOCK=tile.block, ROWS=tile.rows_per_program, WIDE=wide), tile)
        heads_block, head_block = block_size(HEADS), block_size(WIDTH // HEADS)
        yield ("qk_norm_rope", _qk_norm_rope_kernel,
               dict(Q=act, K=act, QO=act, KO=act, WQ=act, WK=act, COS=table, SIN=table, stride_q=i32, stride_k=i32,
                    table_rows=i32, eps=f32),
               dict(NUM_HEADS=HEADS, HEAD_DIM=WIDTH // HEADS, HEADS_BLOCK=heads_block, HEAD_BLOCK=head_block,
                    WIDE=wide),
               launch_config(heads_block * head_block, bf16_size, max_rows_per_program=1))


def aligned_16(kernel, signature: dict[str, str]) -> dict:
    """The specialisation a launch at the 14B geometry gets from Triton's runtime: pointers 16-byte
    aligned (torch allocations; k starts 5120 bf16 into the qkv row) and row strides and widths
    divisible by 16 (5120, 15,360). Without it the compiler cannot prove alignment and narrows
    every load, so the vector widths checked below would say nothing about a real launch."""
    divisible = [name for name, kind in signature.items() if kind.startswith("*") or name.startswith("stride")
                 or name == "N"]
    return {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible}


def scalar_16bit_accesses(ptx: str) -> int:
    """Global loads and stores of a single bf16 (``ld.global.b16``): the activations' accesses
    that are not vectorised."""
    return len(re.findall(r"\b(?:ld|st)\.global\.b16\b", ptx))


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
    """Integer widths of the products of a row number in the kernel's Triton IR: ``row`` (one row a
    program), ``first_row`` and ``rows`` (a block of rows; with one row a block, Triton folds
    ``rows`` into ``first_row``); scalars end ``: i64``, blocks ``: tensor<2xi64>``."""
    row_value = re.compile(r"arith\.muli %(first_row|rows?)(_\d+)?[,\s]")
    products = [line.split(" loc(")[0] for line in ttir.splitlines() if row_value.search(line)]
    return sorted({64 if re.search(r"i64>?$", line) else 32 for line in products})


def main() -> None:
    if os.environ.get("TRITON_INTERPRET"):
        sys.exit("run without TRITON_INTERPRET: the interpreter does not compile")
    target = GPUTarget("cuda", 90, 32)
    results = []
    for name, kernel, signature, constexprs, launch in configs():
        source = ASTSource(fn=kernel, signature={**signature, **{k: "constexpr" for k in constexprs}},
                           constexprs=constexprs, attrs=aligned_16(kernel, signature))
        compiled = triton.compile(source, target=target, options={"num_warps": launch.num_warps})
        results.append({"kernel": name, "wide": constexprs["WIDE"], "block": launch.block,
                        "rows_per_program": launch.rows_per_program, "num_warps": launch.num_warps,
                        "row_offset_bits": row_offset_bits(compiled.asm["ttir"]),
                        "scalar_16bit_accesses": scalar_16bit_accesses(compiled.asm["ptx"]),
                        **resource_usage(compiled.asm["cubin"])})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
