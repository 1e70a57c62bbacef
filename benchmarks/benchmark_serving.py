"""Load generator for OpenAI-style /v1/videos servers: helios-serve, vLLM-Omni, SGLang.

    python benchmarks/benchmark_serving.py --base-url http://127.0.0.1:8000 --num-prompts 8 --max-concurrency 4

Every request is POST /v1/videos (multipart, which all three accept), then followed until it
completes: through Server-Sent Events where the server has them (helios-serve: a `chunk`
event per 33 frames, giving time to first chunk and a playback schedule), else by polling
GET /v1/videos/{id}. The finished MP4 is downloaded and its frames counted.

Give several --base-url (with one --backend each, or one for all) to run the same workload,
same prompts, lengths, seeds and arrival times, against each server in turn, and get one
table side by side.

Workloads (--dataset):
  random       generated prompts, --num-frames each (default 99)
  heliosbench  the HeliosBench T2V prompt set: a CSV with columns id, prompt, duration (frames),
               eval/playground/helios_t2v_prompts.csv in github.com/PKU-YuanGroup/Helios; lengths
               come from its duration column unless --num-frames is given
  file         --dataset-path to a .txt (one prompt per line), .csv (prompt[, duration|num_frames])
               or .jsonl ({"prompt": ..., "num_frames": ...}) file

Arrivals are Poisson at --request-rate (default: all at once), at most --max-concurrency in
flight. Reported: completed/failed, requests/s, generated frames/s, latency p50/p90/p99, time to
first chunk p50/p99 (streaming servers), each stream's real-time factor (generated fps over
--realtime playback fps) and the share of streams that kept up, and SLO attainment (--slo).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import append_record, make_record  # noqa: E402
from serving_stats import RequestRecord, summarize  # noqa: E402

BACKENDS = ("helios", "vllm-omni", "sglang")
# Where each server takes fields beyond the OpenAI ones (a JSON object in a form field).
EXTRA_FIELD = {"helios": "extra_params", "vllm-omni": "extra_params", "sglang": "diffusers_kwargs"}
WORDS = ("a red fox", "a paper boat", "the city at night", "waves on a cliff", "a lantern", "snowy mountains",
         "a cat", "slowly", "in the rain", "at sunset", "drone shot", "close-up", "running", "glowing", "old film")


@dataclass(frozen=True)
class Job:
    prompt: str
    num_frames: int
    seed: int
    delay_s: float
    """When to submit, from the start of the run."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_argument_group("servers")
    target.add_argument("--base-url", nargs="+", default=["http://127.0.0.1:8000"], help="server root URL(s)")
    target.add_argument("--backend", nargs="+", default=["helios"], choices=BACKENDS,
                        help="server kind: one for all URLs or one per URL")
    target.add_argument("--model", default=None, help="model name sent with each request [server default]")
    target.add_argument("--api-key", default=os.environ.get("HELIOS_API_KEY") or os.environ.get("OPENAI_API_KEY"),
                        help="Bearer token [$HELIOS_API_KEY or $OPENAI_API_KEY]")
    work = parser.add_argument_group("workload")
    work.add_argument("--dataset", default="random", choices=("random", "heliosbench", "file"))
    work.add_argument("--dataset-path", default=None, help="prompt file for heliosbench and file")
    work.add_argument("--num-prompts", type=int, default=8, help="requests to send (prompts repeat if fewer)")
    work.add_argument("--num-frames", type=int, default=None,
                      help="frames per video [the dataset's durations; 99 for random]")
    work.add_argument("--size", default=None, help="WIDTHxHEIGHT [server default]")
    work.add_argument("--seed", type=int, default=0, help="seeds prompts, arrivals and each request (seed + i)")
    work.add_argument("--extra", default=None, metavar="JSON",
                      help='model fields, e.g. \'{"pyramid_num_inference_steps_list": [1,1,1]}\', sent in the '
                           "backend's extra field (extra_params, or diffusers_kwargs for SGLang)")
    load = parser.add_argument_group("load")
    load.add_argument("--request-rate", type=float, default=math.inf, help="requests/s, Poisson arrivals [all at once]")
    load.add_argument("--max-concurrency", type=int, default=None, help="requests in flight at most [no limit]")
    load.add_argument("--warmup-requests", type=int, default=1, help="untimed requests first, one at a time")
    load.add_argument("--request-timeout", type=float, default=1800.0, help="seconds before a request counts as failed")
    load.add_argument("--poll-interval", type=float, default=0.1, help="seconds between status polls")
    load.add_argument("--no-stream", action="store_true", help="poll even where the server streams events")
    report = parser.add_argument_group("report")
    report.add_argument("--realtime", type=float, default=24.0, metavar="FPS",
                        help="playback fps for real-time factors; helios-serve also schedules for it (deadline policy)")
    report.add_argument("--slo", type=float, default=None, metavar="SECONDS", help="end-to-end deadline per request")
    report.add_argument("--output-file", default=None, help="append results to this .jsonl (and its .csv)")
    report.add_argument("--label", default=None, help="name of this run in the results [backend@host:port]")
    report.add_argument("--json", action="store_true", help="print the results as JSON lines, not a table")
    report.add_argument("--disable-tqdm", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if len(args.backend) not in (1, len(args.base_url)):
        parser.error("give one --backend for all URLs or one per --base-url")
    if args.dataset != "random" and not args.dataset_path:
        parser.error(f"--dataset {args.dataset} needs --dataset-path")
    if args.num_prompts < 1 or (args.max_concurrency is not None and args.max_concurrency < 1):
        parser.error("--num-prompts and --max-concurrency must be at least 1")
    if args.request_rate <= 0 or args.realtime <= 0:
        parser.error("--request-rate and --realtime must be positive")
    if args.extra is not None:
        try:
            args.extra = json.loads(args.extra)
        except json.JSONDecodeError as exc:
            parser.error(f"--extra is not valid JSON: {exc}")
    return args


# -- workload ----------------------------------------------------------------------------------
def load_prompts(args) -> list[tuple[str, int | None]]:
    """(prompt, frames or None) pairs of the dataset."""
    if args.dataset == "random":
        rng = random.Random(args.seed)
        return [(" ".join(rng.sample(WORDS, 4)), None) for _ in range(args.num_prompts)]
    path = Path(args.dataset_path)
    if not path.is_file():
        raise SystemExit(f"benchmark_serving: no such dataset file: {path}")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [(row["prompt"], row.get("num_frames")) for row in rows]
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "prompt" not in rows[0]:
            raise SystemExit(f"benchmark_serving: {path} needs a 'prompt' column")
        length = "duration" if "duration" in rows[0] else "num_frames" if "num_frames" in rows[0] else None
        return [(row["prompt"], int(row[length]) if length else None) for row in rows]
    return [(line.strip(), None) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_jobs(args) -> list[Job]:
    prompts = load_prompts(args)
    rng = random.Random(args.seed)
    if args.dataset != "random":  # a seeded sample, so a few prompts still mix the lengths
        rng.shuffle(prompts)
    jobs, clock = [], 0.0
    for i in range(args.num_prompts):
        prompt, frames = prompts[i % len(prompts)]
        jobs.append(Job(prompt, args.num_frames or frames or 99, args.seed + i, clock))
        if math.isfinite(args.request_rate):
            clock += rng.expovariate(args.request_rate)
    return jobs


# -- one request -------------------------------------------------------------------------------
class Target:
    def __init__(self, base_url: str, backend: str, args):
        self.base_url, self.backend, self.args = base_url.rstrip("/"), backend, args
        host = urlparse(self.base_url).netloc
        self.label = args.label or f"{backend}@{host}"
        self.stream = backend == "helios" and not args.no_stream
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        self.client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=httpx.Timeout(60.0))

    def form(self, job: Job) -> dict:
        fields = {"prompt": job.prompt, "num_frames": str(job.num_frames), "seed": str(job.seed)}
        if self.args.size:
            fields["size"] = self.args.size
        if self.args.model:
            fields["model"] = self.args.model
        if self.backend == "helios":  # chunk k is due k*33/fps after playback starts (deadline policy)
            fields.update(realtime="true", fps=str(round(self.args.realtime)))
        if self.args.extra:
            fields[EXTRA_FIELD[self.backend]] = json.dumps(self.args.extra)
        return fields

    async def run(self, job: Job) -> RequestRecord:
        record = RequestRecord(submitted=time.monotonic())
        try:
            await asyncio.wait_for(self._follow(job, record), self.args.request_timeout)
        except asyncio.TimeoutError:
            record.error = f"no result after {self.args.request_timeout:g} s"
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            record.error = f"{type(exc).__name__}: {exc}"
        return record

    async def _follow(self, job: Job, record: RequestRecord) -> None:
        # Multipart (files={name: (None, value)}): vLLM-Omni rejects JSON bodies on /v1/videos.
        response = await self.client.post("/v1/videos", files={k: (None, v) for k, v in self.form(job).items()})
        if response.status_code >= 400:
            record.error = f"HTTP {response.status_code}: {response.text[:200]}"
            return
        video_id = response.json()["id"]
        status = await (self._events(video_id, record) if self.stream else self._poll(video_id))
        record.finished = time.monotonic()
        if status.get("status") != "completed":
            record.error = str(status.get("error") or status.get("status"))
            return
        content = await self.client.get(f"/v1/videos/{video_id}/content", timeout=300)
        content.raise_for_status()
        record.frames = count_frames(content.content) or sum(record.chunk_frames)
        record.ok = True

    async def _poll(self, video_id: str) -> dict:
        while True:
            status = (await self.client.get(f"/v1/videos/{video_id}")).raise_for_status().json()
            if status.get("status") in ("completed", "failed", "cancelled"):
                return status
            await asyncio.sleep(self.args.poll_interval)

    async def _events(self, video_id: str, record: RequestRecord) -> dict:
        async with self.client.stream("GET", f"/v1/videos/{video_id}/events", timeout=None) as events:
            events.raise_for_status()
            event = None
            async for line in events.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event in ("chunk", "completed", "failed"):
                    data = json.loads(line[6:])
                    if event != "chunk":
                        return data
                    record.chunk_arrivals.append(time.monotonic())
                    record.chunk_frames.append(int(data.get("num_frames", 33)))
        return {"status": "failed", "error": "event stream ended early"}

    async def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Until /ready answers 200 (helios-serve: model loaded and warm), or /health where a
        server has no /ready (vLLM-Omni, SGLang)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ready = await self.client.get("/ready", timeout=5)
                if ready.status_code == 404:
                    ready = await self.client.get("/health", timeout=5)
                if ready.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"benchmark_serving: {self.base_url} was not ready within {timeout_s:g} s")
            await asyncio.sleep(0.5)


def count_frames(mp4: bytes) -> int:
    import av

    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        return stream.frames or sum(1 for _ in container.decode(stream))


# -- a run -------------------------------------------------------------------------------------
async def run_target(target: Target, jobs: list[Job], args) -> tuple[list[RequestRecord], float]:
    await target.wait_ready()
    for job in jobs[: args.warmup_requests]:
        warm = await target.run(Job(job.prompt, min(job.num_frames, 33), job.seed, 0.0))
        if not warm.ok:
            raise SystemExit(f"benchmark_serving: warm-up request to {target.base_url} failed: {warm.error}")
    limit = asyncio.Semaphore(args.max_concurrency or len(jobs))
    bar = progress_bar(len(jobs), target.label, args.disable_tqdm)
    started = time.monotonic()

    async def one(job: Job) -> RequestRecord:
        await asyncio.sleep(max(0.0, started + job.delay_s - time.monotonic()))
        async with limit:
            record = await target.run(job)
        bar.update(1)
        return record

    records = await asyncio.gather(*(one(job) for job in jobs))
    duration = time.monotonic() - started
    bar.close()
    await target.client.aclose()
    return list(records), duration


def progress_bar(total: int, label: str, disabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="req", disable=disabled, file=sys.stderr)


def result_record(target: Target, args, jobs: list[Job], records: list[RequestRecord], duration: float) -> dict:
    metrics = summarize(records, duration, args.realtime, args.slo)
    config = {
        "base_url": target.base_url, "backend": target.backend, "model": args.model, "dataset": args.dataset,
        "num_prompts": len(jobs), "num_frames": args.num_frames, "size": args.size, "request_rate": args.request_rate,
        "max_concurrency": args.max_concurrency or len(jobs), "streamed": target.stream, "extra": args.extra,
    }
    done = [r for r in records if r.ok]
    samples = {
        "latency_s": [r.latency for r in done],
        "ttfc_s": [r.time_to_first_chunk for r in done if r.chunk_arrivals],
        "errors": sorted({r.error for r in records if not r.ok}),
    }
    return make_record("serving", target.label, config, metrics, samples)


ROWS = [
    ("completed / failed", lambda m: f"{m['completed']} / {m['failed']}"),
    ("duration", lambda m: f"{m['duration_s']:.2f} s"),
    ("requests/s", lambda m: f"{m['request_throughput_per_s']:.3f}"),
    ("generated frames/s", lambda m: f"{m['frames_per_second']:.1f}"),
    ("latency p50 / p90 / p99",
     lambda m: f"{m['latency_p50_s']:.2f} / {m['latency_p90_s']:.2f} / {m['latency_p99_s']:.2f} s"),
    ("first chunk p50 / p99", lambda m: "n/a (not streamed)" if math.isnan(m["ttfc_p50_s"])
        else f"{m['ttfc_p50_s']:.2f} / {m['ttfc_p99_s']:.2f} s"),
    ("real-time factor p50 / min", lambda m: f"{m['realtime_factor_p50']:.2f} / {m['realtime_factor_min']:.2f} "
        f"(at {m['playback_fps']:g} fps)"),
    ("streams that kept up", lambda m: "n/a (not streamed)" if math.isnan(m["streams_kept_up"])
        else f"{100 * m['streams_kept_up']:.0f}%"),
    ("SLO attainment", lambda m: f"{100 * m['slo_attainment']:.0f}% within {m['slo_s']:g} s" if "slo_s" in m else "-"),
]


def format_table(results: list[dict]) -> str:
    header = [""] + [r["label"] for r in results]
    rows = [header] + [[name] + [fmt(r["metrics"]) for r in results] for name, fmt in ROWS]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    for result in results:
        for error in result["samples"]["errors"][:3]:
            lines.append(f"{result['label']} error: {error}")
    return "\n".join(lines)


async def main_async(args) -> int:
    jobs = build_jobs(args)
    backends = args.backend * len(args.base_url) if len(args.backend) == 1 else args.backend
    frames = sum(job.num_frames for job in jobs)
    print(f"{len(jobs)} requests, {frames} frames in all, rate {args.request_rate:g}/s, "
          f"concurrency {args.max_concurrency or 'unlimited'}", file=sys.stderr)
    results = []
    for url, backend in zip(args.base_url, backends):
        target = Target(url, backend, args)
        records, duration = await run_target(target, jobs, args)
        result = result_record(target, args, jobs, records, duration)
        results.append(result)
        if args.output_file:
            append_record(args.output_file, result)
    print("\n".join(json.dumps(r) for r in results) if args.json else format_table(results))
    return 0 if all(r["metrics"]["completed"] for r in results) else 1


def main(argv=None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
