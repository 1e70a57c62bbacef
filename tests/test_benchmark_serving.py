"""The serving benchmark, its statistics and results format, the latency benchmark and plots."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from live_server import start_server

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from benchmark_serving import build_jobs, parse_args  # noqa: E402
from serving_stats import RequestRecord, percentile, stream_realtime, summarize  # noqa: E402


def test_percentiles_interpolate_between_order_statistics():
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def streamed(arrivals, frames=33, submitted=0.0, finished=None):
    return RequestRecord(submitted=submitted, finished=finished or arrivals[-1], ok=True, frames=frames * len(arrivals),
                         chunk_arrivals=list(arrivals), chunk_frames=[frames] * len(arrivals))


def test_a_stream_keeps_up_when_every_chunk_arrives_before_playback_needs_it():
    # Playback from t=10 at 24 fps: chunk 2 is due at 10 + 33/24 = 11.375, chunk 3 at 12.75.
    factor, kept_up = stream_realtime(streamed([10.0, 11.0, 12.5]), 24)
    assert kept_up is True
    assert factor == pytest.approx(66 / 2.5 / 24)  # 26.4 fps generated after the first chunk
    assert stream_realtime(streamed([10.0, 11.0, 13.0]), 24)[1] is False  # chunk 3 was 0.25 s late


def test_a_request_seen_only_when_complete_has_a_factor_but_no_verdict():
    record = RequestRecord(submitted=1.0, finished=5.125, ok=True, frames=99)
    assert stream_realtime(record, 24) == (pytest.approx(1.0), None)


def test_summary_by_hand():
    records = [
        streamed([1.0, 2.0], submitted=0.0, finished=2.0),  # latency 2, first chunk 1
        streamed([3.0, 4.0], submitted=0.0, finished=4.0),  # latency 4, first chunk 3
        RequestRecord(submitted=0.0, finished=6.0, ok=True, frames=66),  # polled: latency 6
        RequestRecord(submitted=0.0, error="HTTP 422"),
    ]
    summary = summarize(records, duration_s=8.0, playback_fps=33.0, slo_s=4.0)
    assert (summary["completed"], summary["failed"]) == (3, 1)
    assert summary["request_throughput_per_s"] == 3 / 8
    assert summary["frames_per_second"] == 198 / 8
    assert summary["latency_p50_s"] == 4.0 and summary["latency_mean_s"] == 4.0
    assert summary["latency_p90_s"] == pytest.approx(5.6)
    assert summary["ttfc_p50_s"] == 2.0
    assert summary["streams_kept_up"] == 1.0  # both streamed ones; the polled one is not judged
    assert summary["slo_attainment"] == 2 / 4  # the failure misses the deadline too


def test_poisson_arrivals_and_dataset_lengths(tmp_path):
    bench = tmp_path / "bench.csv"
    with bench.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "prompt", "duration"])
        writer.writerows([(i, f"prompt {i}", [120, 240, 720, 1440][i % 4]) for i in range(8)])
    jobs = build_jobs(parse_args(["--dataset", "heliosbench", "--dataset-path", str(bench), "--num-prompts", "8"]))
    assert sorted(j.num_frames for j in jobs) == [120, 120, 240, 240, 720, 720, 1440, 1440]
    assert all(j.delay_s == 0 for j in jobs)  # no --request-rate: all at once
    assert [j.seed for j in jobs] == list(range(8))
    override = build_jobs(parse_args(["--dataset", "file", "--dataset-path", str(bench), "--num-frames", "33"]))
    assert {j.num_frames for j in override} == {33}

    jobs = build_jobs(parse_args(["--num-prompts", "4000", "--request-rate", "5", "--seed", "3"]))
    gaps = [b.delay_s - a.delay_s for a, b in zip(jobs, jobs[1:])]
    assert min(gaps) >= 0 and sum(gaps) / len(gaps) == pytest.approx(1 / 5, rel=0.05)
    # Exponential gaps: the share longer than the mean is e^-1.
    assert sum(g > 0.2 for g in gaps) / len(gaps) == pytest.approx(math.exp(-1), abs=0.03)
    text = tmp_path / "prompts.txt"
    text.write_text("one\n\ntwo\n")
    assert [j.prompt for j in build_jobs(parse_args(["--dataset", "file", "--dataset-path", str(text),
                                                     "--num-prompts", "3"]))] in (["one", "two", "one"],
                                                                                 ["two", "one", "two"])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("bench") / "data")
    yield live
    live.stop()


def run(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=timeout)


def test_benchmark_against_a_live_server_streams_and_polls(server, tmp_path):
    out = tmp_path / "results.jsonl"
    common = ["--base-url", server.url, "--num-prompts", "4", "--max-concurrency", "2", "--num-frames", "66",
              "--size", "128x64", "--slo", "60", "--output-file", str(out), "--disable-tqdm"]
    done = run("benchmark_serving.py", *common)
    assert done.returncode == 0, done.stderr
    for row in ("completed / failed", "generated frames/s", "latency p50 / p90 / p99", "first chunk p50 / p99",
                "streams that kept up", "SLO attainment"):
        assert row in done.stdout
    polled = run("benchmark_serving.py", *common, "--no-stream", "--request-rate", "4", "--label", "polled")
    assert polled.returncode == 0, polled.stderr
    streamed_run, polled_run = (json.loads(line) for line in out.read_text().splitlines())
    for record in (streamed_run, polled_run):
        assert record["metrics"]["completed"] == 4 and record["metrics"]["failed"] == 0
        assert record["metrics"]["frames"] == 4 * 65  # counted in the downloaded MP4s
        assert record["metrics"]["slo_attainment"] == 1.0 and len(record["samples"]["latency_s"]) == 4
    assert 0 < streamed_run["metrics"]["ttfc_p50_s"] <= streamed_run["metrics"]["latency_p50_s"]
    assert 0 <= streamed_run["metrics"]["streams_kept_up"] <= 1
    assert math.isnan(polled_run["metrics"]["ttfc_p50_s"]) and polled_run["label"] == "polled"
    with out.with_suffix(".csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows][1] == "polled" and "metrics.frames_per_second" in rows[0]


def test_benchmark_reports_failed_requests_without_crashing(server):
    done = run("benchmark_serving.py", "--base-url", server.url, "--num-prompts", "2", "--size", "100x64",
               "--warmup-requests", "0", "--disable-tqdm")
    assert done.returncode == 1  # nothing completed
    assert "0 / 2" in done.stdout and "HTTP 422" in done.stdout and "Traceback" not in done.stderr


def test_latency_benchmark_and_plots(server, tmp_path):
    out = tmp_path / "results.jsonl"
    for concurrency in ("1", "3"):
        done = run("benchmark_serving.py", "--base-url", server.url, "--num-prompts", "3", "--num-frames", "33",
                   "--size", "128x64", "--max-concurrency", concurrency, "--output-file", str(out), "--disable-tqdm")
        assert done.returncode == 0, done.stderr
    latency = run("benchmark_latency.py", "--num-frames", "66", "--height", "64", "--width", "128", "--repeats", "1",
                  "--output-file", str(out))
    assert latency.returncode == 0, latency.stderr
    for part in ("text encode", "stage 0 forward", "stage 2 forward", "stage transition", "decode", "mp4 encode",
                 "engine overhead per step", "time to first chunk"):
        assert part in latency.stdout, part
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["benchmark"] == "latency" and record["metrics"]["frames"] == 65
    assert len(record["samples"]["stage_2_forward_s"]) == 4 + 2  # 2 steps a chunk; the first chunk amplified to 4
    plots = run("plot.py", str(out), "--output-dir", str(tmp_path / "plots"))
    assert plots.returncode == 0, plots.stderr
    for name in ("throughput_vs_concurrency.png", "latency_cdf.png", "latency_breakdown.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert run("plot.py", str(empty), "--output-dir", str(tmp_path)).returncode == 1


def test_the_readme_quick_start_command_is_valid():
    readme = (REPO / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith("python benchmarks/benchmark_serving.py"))
    args = parse_args(line.split()[2:])
    assert args.num_prompts == 32 and args.slo == 20
