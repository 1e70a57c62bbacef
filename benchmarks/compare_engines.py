"""The same serving workload against several servers: helios-serve (under different flags),
vLLM-Omni and SGLang.

    python benchmarks/compare_engines.py --tiny-checkpoint /tmp/helios-tiny \
        --vllm-omni ~/.cache/helios-serve-ci/vllm_omni-py311-*/bin/vllm-omni \
        --sglang ~/.cache/helios-serve-ci/sglang-py311-*/bin/sglang

Each server is started on 127.0.0.1 in turn with the same diffusers-format checkpoint, alone
on the machine, and driven by benchmark_serving.py with the same prompts, lengths, seeds and
arrivals (default: 8 requests of 99 frames at concurrency 8); one table compares them. vLLM-Omni
and SGLang serve Helios through our plugins, so the model code is the same everywhere and the
table compares the engines' scheduling and serving. Their environments are the ones
`.ci/engine-tests` builds, with this checkout installed in them.

--tiny-checkpoint makes a tiny random Distilled-style checkpoint (the one the engine tests use)
at that path if it is not there yet: the figures then measure serving machinery on a CPU, not a
GPU's speed. With `--checkpoint helios-distilled --helios "--simulate h100" ...` the servers are
simulated GPUs (helios-serve serve --simulate): serving studies at a GPU's time ratios, labelled
as simulation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import benchmark_serving  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a diffusers-format Helios checkpoint directory (or, for simulated "
                                            "servers only, a released model name: helios-distilled)")
    model.add_argument("--tiny-checkpoint", metavar="DIR", help="make (once) and use a tiny random checkpoint here")
    parser.add_argument("--helios", action="append", default=None, metavar="FLAGS",
                        help="one helios-serve server with these `serve` flags; repeat for several "
                             "[\"--policy round-robin\" and \"--policy fcfs\"]")
    parser.add_argument("--vllm-omni", default=None, metavar="PATH", help="vLLM-Omni's `vllm-omni` command [skipped]")
    parser.add_argument("--sglang", default=None, metavar="PATH", help="SGLang's `sglang` command [skipped]")
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--max-concurrency", type=int, default=8)
    parser.add_argument("--num-frames", type=int, default=99)
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT [the checkpoint's default]")
    parser.add_argument("--request-rate", default="inf", help="requests/s, Poisson arrivals [all at once]")
    parser.add_argument("--realtime", default="24", metavar="FPS", help="playback fps of the real-time figures")
    parser.add_argument("--extra", default=None, metavar="JSON", help="model fields sent with every request")
    parser.add_argument("--output-file", default=None, help="append each server's record to this .jsonl")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="seconds for a server to become ready")
    return parser.parse_args(argv)


def tiny_checkpoint(folder: Path) -> Path:
    if not (folder / "model_index.json").is_file():
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import build_reference_pipeline

        build_reference_pipeline("distilled").save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_command(engine: str, option: str, checkpoint: str | Path, port: int, workdir: Path) -> tuple[list[str], dict]:
    """(command, extra environment) of one server; ``option``: helios-serve's flags, or the engine's command."""
    address = ["--host", "127.0.0.1", "--port", str(port)]
    if engine == "helios":
        return [sys.executable, "-m", "helios_serve.cli", "serve", str(checkpoint), *address, *shlex.split(option),
                "--data-dir", str(workdir / "data"), "--log-level", "warning"], {}
    if engine == "vllm-omni":  # as tests/engines/test_vllm_omni.py starts it on a CPU
        shim = REPO / ".ci" / "shims" / "torchvision_ops"
        return [option, "serve", str(checkpoint), "--omni", *address, "--dtype", "float32", "--step-execution",
                "--max-num-seqs", "8"], {"HELIOS_OMNI_CPU": "1", "PYTHONPATH": str(shim)}
    return [option, "serve", "--model-path", str(checkpoint), *address, "--warmup-mode", "off"], {}


def start(command: list[str], extra_env: dict, url: str, workdir: Path, timeout: float) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **extra_env}
    with open(workdir / "server.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                   cwd=workdir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"compare_engines: {command[0]} exited with {process.returncode}; see {workdir}/server.log")
        for path in ("/ready", "/health"):  # helios-serve: loaded and warm; the others: up
            try:
                status = httpx.get(url + path, timeout=2).status_code
            except httpx.HTTPError:
                status = None
            if status == 200:
                return process
            if status != 404:
                break
        time.sleep(0.5)
    stop(process)
    raise SystemExit(f"compare_engines: {command[0]} was not ready within {timeout:g} s; see {workdir}/server.log")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def bench_args(args, url: str, backend: str, label: str) -> argparse.Namespace:
    argv = ["--base-url", url, "--backend", backend, "--num-prompts", str(args.num_prompts), "--max-concurrency",
            str(args.max_concurrency), "--num-frames", str(args.num_frames), "--label", label, "--disable-tqdm"]
    argv += ["--request-rate", args.request_rate, "--realtime", args.realtime]
    argv += ["--size", args.size] if args.size else []
    argv += ["--extra", args.extra] if args.extra else []
    argv += ["--output-file", args.output_file] if args.output_file else []
    return benchmark_serving.parse_args(argv)


def run_one(args, engine: str, option: str, checkpoint: str | Path) -> dict:
    label = f"helios {option}".strip() if engine == "helios" else engine
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix=f"compare-{engine}-") as folder:
        workdir = Path(folder)
        command, env = server_command(engine, option, checkpoint, port, workdir)
        started = time.monotonic()
        process = start(command, env, url, workdir, args.start_timeout)
        print(f"{label}: ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
        try:
            bench = bench_args(args, url, engine, label)
            target = benchmark_serving.Target(url, engine, bench)
            jobs = benchmark_serving.build_jobs(bench)
            records, duration = asyncio.run(benchmark_serving.run_target(target, jobs, bench))
            result = benchmark_serving.result_record(target, bench, jobs, records, duration)
        finally:
            stop(process)
    if args.output_file:
        benchmark_serving.append_record(args.output_file, result)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still stops its server (finally)
    checkpoint = args.checkpoint if args.checkpoint else tiny_checkpoint(Path(args.tiny_checkpoint))
    flags = args.helios if args.helios is not None else ["--policy round-robin", "--policy fcfs"]
    servers = [("helios", option) for option in flags]
    servers += [(engine, path) for engine, path in (("vllm-omni", args.vllm_omni), ("sglang", args.sglang)) if path]
    print(f"{args.num_prompts} requests of {args.num_frames} frames at concurrency {args.max_concurrency}, "
          f"{checkpoint}", file=sys.stderr)
    results = [run_one(args, engine, option, checkpoint) for engine, option in servers]
    print(benchmark_serving.format_table(results))
    print(json.dumps({r["label"]: r["metrics"] for r in results}), file=sys.stderr)
    return 0 if all(r["metrics"]["completed"] == args.num_prompts for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
