"""The results format every benchmark writes: JSON lines, plus a CSV view of the same records.

A record is {"benchmark", "timestamp", "host", "label", "config": {...}, "metrics": {...},
"samples": {name: [values]}}. Appending to results.jsonl also rewrites results.csv next to it
(one row per record; config.* and metrics.* columns; samples stay in the JSON only), so runs
of different benchmarks and engines accumulate in one place and plot.py can draw them.
"""

from __future__ import annotations

import csv
import datetime
import json
import platform
from pathlib import Path


def make_record(benchmark: str, label: str, config: dict, metrics: dict, samples: dict | None = None) -> dict:
    return {
        "benchmark": benchmark,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "label": label,
        "config": config,
        "metrics": metrics,
        "samples": samples or {},
    }


def append_record(path: str | Path, record: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    write_csv(read_records([path]), path.with_suffix(".csv"))


def read_records(paths) -> list[dict]:
    records = []
    for path in paths:
        with Path(path).open(encoding="utf-8") as f:
            records += [json.loads(line) for line in f if line.strip()]
    return records


def flatten(record: dict) -> dict:
    row = {key: record[key] for key in ("benchmark", "timestamp", "host", "label")}
    for section in ("config", "metrics"):
        for key, value in record[section].items():
            row[f"{section}.{key}"] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return row


def write_csv(records: list[dict], path: Path) -> None:
    rows = [flatten(record) for record in records]
    columns = list(dict.fromkeys(column for row in rows for column in row))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
