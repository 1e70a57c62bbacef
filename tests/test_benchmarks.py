"""The benchmark scripts run and report what they promise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_throughput_reports_its_figures(tmp_path):
    out, results = tmp_path / "throughput.json", tmp_path / "results.jsonl"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/benchmark_throughput.py"), "--num-requests", "3", "--num-frames", "33",
         "--height", "64", "--width", "64", "--repeats", "1", "--json", str(out), "--output-file", str(results)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "batched / sequential" in result.stdout
    figures = json.loads(out.read_text())
    for key in ("frames_per_second", "batched_vs_sequential", "overhead_us_per_step", "overhead_fraction",
                "ttfc_s", "peak_rss_mb"):
        assert figures[key] > 0, key
    assert figures["mean_rows_per_forward"] > 1  # the requests' steps were batched
    record = json.loads(results.read_text())  # the shared results format
    assert record["benchmark"] == "throughput" and record["config"]["max_concurrency"] == 3
    assert record["metrics"]["frames_per_second"] == figures["frames_per_second"]
    assert results.with_suffix(".csv").read_text().startswith("benchmark,")


def test_kernel_benchmarks_explain_themselves_without_a_gpu():
    import torch

    for script in sorted((REPO / "benchmarks/kernels").glob("bench_*.py")):
        assert subprocess.run([sys.executable, str(script), "--help"], capture_output=True).returncode == 0
        if not torch.cuda.is_available():
            result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
            assert result.returncode != 0 and "need a CUDA GPU" in result.stderr, script.name


def test_replica_benchmark_runs_one_and_two_replicas():
    """benchmarks/benchmark_replicas.py: the same jobs on 1 and 2 Ray Serve replicas."""
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "benchmark_replicas.py"), "--replicas", "1", "2", "--jobs", "2",
         "--num-frames", "33", "--size", "128x64", "--json"],
        capture_output=True, text=True, timeout=600, check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    one, two = report["runs"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    assert one["frames_per_second"] > 0 and two["frames_per_second"] > 0
    assert set(two["jobs_per_replica"]) == {"replica-0", "replica-1"}  # the work was spread
    print(f"2 vs 1 replicas: {two['speedup_vs_first']}x")


def test_compare_engines_runs_two_simulated_servers(tmp_path):
    """benchmarks/compare_engines.py: the same jobs against servers started with different flags,
    here two simulated H100s (no weights), one table with a column each."""
    out = tmp_path / "compare.jsonl"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "compare_engines.py"), "--checkpoint", "helios-distilled",
         "--helios=--simulate h100 --policy round-robin", "--helios=--simulate h100 --policy fcfs",
         "--num-prompts", "2", "--max-concurrency", "2", "--num-frames", "33", "--size", "320x192",
         "--extra", '{"pyramid_num_inference_steps_list": [1, 1, 1]}', "--output-file", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    header = result.stdout.splitlines()[0]
    assert "helios --simulate h100 --policy round-robin" in header and "helios --simulate h100 --policy fcfs" in header
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["metrics"]["completed"] for r in records] == [2, 2]
    # fcfs on a 14B forward: the first request runs alone, so it finishes before round-robin's first
    fcfs, round_robin = sorted(records[1]["samples"]["latency_s"]), sorted(records[0]["samples"]["latency_s"])
    assert fcfs[0] < round_robin[0]
