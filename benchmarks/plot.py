"""Plots of benchmark results (the JSON lines the benchmarks append with --output-file).

    python benchmarks/plot.py results.jsonl [more.jsonl ...] --output-dir plots/

Writes, for whatever the files hold:
  throughput_vs_concurrency.png  generated frames/s against requests in flight, one line per
                                 label (serving runs, and the engine's throughput runs)
  latency_cdf.png                the distribution of end-to-end latency of each serving run
  latency_breakdown.png          where one request's time goes (benchmark_latency runs)
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import read_records  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results .jsonl files")
    parser.add_argument("--output-dir", default=".", help="where the PNGs go")
    return parser.parse_args(argv)


def throughput_series(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """label -> [(concurrency, frames/s)] sorted by concurrency; the best run per point."""
    best: dict[str, dict[int, float]] = defaultdict(dict)
    for record in records:
        if record["benchmark"] not in ("serving", "throughput"):
            continue
        concurrency = record["config"]["max_concurrency"]
        fps = record["metrics"]["frames_per_second"]
        best[record["label"]][concurrency] = max(fps, best[record["label"]].get(concurrency, 0.0))
    return {label: sorted(points.items()) for label, points in best.items()}


def plot_throughput(records: list[dict], path: Path, plt) -> bool:
    series = throughput_series(records)
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        ax.plot([c for c, _ in points], [f for _, f in points], marker="o", label=label)
    ax.set(xlabel="requests in flight (max concurrency)", ylabel="generated frames/s", title="Throughput")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_latency_cdf(records: list[dict], path: Path, plt) -> bool:
    runs = [r for r in records if r["benchmark"] == "serving" and r["samples"].get("latency_s")]
    runs.sort(key=lambda r: (r["label"], r["config"]["max_concurrency"]))
    if not runs:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for record in runs:
        latencies = sorted(record["samples"]["latency_s"])
        shares = [(i + 1) / len(latencies) for i in range(len(latencies))]
        ax.step(latencies, shares, where="post",
                label=f"{record['label']}, concurrency {record['config']['max_concurrency']}")
    ax.set(xlabel="end-to-end latency (s)", ylabel="share of requests", ylim=(0, 1.02), title="Latency CDF")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_latency_breakdown(records: list[dict], path: Path, plt) -> bool:
    runs = [r for r in records if r["benchmark"] == "latency"]
    if not runs:
        return False
    fig, ax = plt.subplots(figsize=(7, 2.4 + 0.5 * len(runs)))
    for row, record in enumerate(runs):
        left = 0.0
        parts = {k[:-2]: v for k, v in record["metrics"].items() if k.endswith("_s") and k not in ("wall_s", "ttfc_s")}
        for name, seconds in sorted(parts.items()):
            ax.barh(row, 1e3 * seconds, left=left, label=name.replace("_", " ") if row == 0 else None)
            left += 1e3 * seconds
    ax.set_yticks(range(len(runs)), [f"{r['label']} {r['config']['size']}" for r in runs])
    ax.set(xlabel="ms in one request", title="Where one request's time goes")
    ax.legend(fontsize="small", ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.45))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def main(argv=None) -> int:
    args = parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    records = read_records(args.results)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [name for name, draw in (("throughput_vs_concurrency.png", plot_throughput),
                                        ("latency_cdf.png", plot_latency_cdf),
                                        ("latency_breakdown.png", plot_latency_breakdown))
               if draw(records, out / name, plt)]
    if not written:
        print("plot: no serving, throughput or latency records in the files", file=sys.stderr)
        return 1
    for name in written:
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
