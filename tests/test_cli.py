"""The helios-serve command line, run as a user would run it."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "helios_serve.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_check_runs_the_default_model():
    result = run_cli("check", "--height", "96", "--width", "160", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    assert "helios-tiny" in result.stdout
    # 96x160 video -> 12x20 latents: 9*6*10 noisy; short 2*6*10, mid 1*3*5, long 4*2*3 (padded up)
    assert "699 per forward = 540 noisy + 159 history (short 120, mid 15, long 24)" in result.stdout
    assert "finite" in result.stdout


def test_check_loads_a_checkpoint_folder(save_reference):
    _, folder = save_reference()
    result = run_cli("check", str(folder), "--height", "64", "--width", "64", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    assert "float32 on cpu" in result.stdout


def test_bad_input_is_one_line_without_traceback(tmp_path):
    for args in (["check", "no-such-model"], ["check", "--height", "100"], ["check", str(tmp_path)]):
        result = run_cli(*args)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("helios-serve: error:")


def test_example_and_benchmark_run():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    example = subprocess.run([sys.executable, str(repo / "examples/transformer_forward.py")], capture_output=True, text=True)
    assert example.returncode == 0, example.stderr
    assert "velocity (2, 16, 9, 12, 20)" in example.stdout
    bench = subprocess.run(
        [sys.executable, str(repo / "benchmarks/bench_step.py"), "--sizes", "64x64", "--batch-sizes", "1,2", "--repeats", "1"],
        capture_output=True,
        text=True,
    )
    assert bench.returncode == 0, bench.stderr
    assert len(bench.stdout.strip().splitlines()) == 3  # header + one row per batch size
