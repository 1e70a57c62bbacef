"""Statistics of a serving benchmark run: latency percentiles, time to first chunk, real-time
factors and SLO attainment. Plain Python, so the numbers can be checked by hand."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class RequestRecord:
    """One request as the client saw it; times are seconds on the client's monotonic clock."""

    submitted: float
    finished: float | None = None
    ok: bool = False
    error: str | None = None
    frames: int = 0
    chunk_arrivals: list[float] = field(default_factory=list)
    """When each chunk was announced (only for servers that stream progress)."""
    chunk_frames: list[int] = field(default_factory=list)

    @property
    def latency(self) -> float:
        return self.finished - self.submitted

    @property
    def time_to_first_chunk(self) -> float | None:
        return self.chunk_arrivals[0] - self.submitted if self.chunk_arrivals else None


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between order statistics."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def stream_realtime(record: RequestRecord, playback_fps: float) -> tuple[float, bool | None]:
    """(real-time factor, kept up) of one stream.

    A streamed request is played from its first chunk's arrival: chunk k is due when the frames
    before it have played, and the stream kept up if no chunk came after it was due. Its
    real-time factor is the frame rate at which chunks arrived after the first one (the first
    chunk is the start-up latency, reported as time to first chunk) over the playback rate.
    A request seen only when complete has no playback schedule: its factor is frames over its
    whole latency, and "kept up" is unknown (None).
    """
    arrivals, frames = record.chunk_arrivals, record.chunk_frames
    if len(arrivals) < 2:
        generated_fps = record.frames / record.latency if record.latency > 0 else math.inf
        return generated_fps / playback_fps, (True if len(arrivals) == 1 else None)
    later_frames = sum(frames[1:])
    generated_fps = later_frames / max(arrivals[-1] - arrivals[0], 1e-9)
    start, played = arrivals[0], 0
    kept_up = True
    for arrival, count in zip(arrivals, frames):
        if arrival > start + played / playback_fps + 1e-6:
            kept_up = False
        played += count
    return generated_fps / playback_fps, kept_up


def summarize(records: list[RequestRecord], duration_s: float, playback_fps: float, slo_s: float | None) -> dict:
    done = [r for r in records if r.ok]
    latencies = [r.latency for r in done]
    ttfc = [t for r in done if (t := r.time_to_first_chunk) is not None]
    streams = [stream_realtime(r, playback_fps) for r in done]
    judged = [kept for _, kept in streams if kept is not None]
    frames = sum(r.frames for r in done)
    summary = {
        "completed": len(done),
        "failed": len(records) - len(done),
        "duration_s": duration_s,
        "request_throughput_per_s": len(done) / duration_s if duration_s > 0 else math.nan,
        "frames": frames,
        "frames_per_second": frames / duration_s if duration_s > 0 else math.nan,
        "latency_mean_s": sum(latencies) / len(latencies) if latencies else math.nan,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p90_s": percentile(latencies, 90),
        "latency_p99_s": percentile(latencies, 99),
        "ttfc_p50_s": percentile(ttfc, 50),
        "ttfc_p99_s": percentile(ttfc, 99),
        "realtime_factor_p50": percentile([f for f, _ in streams], 50),
        "realtime_factor_min": min((f for f, _ in streams), default=math.nan),
        "streams_kept_up": sum(judged) / len(judged) if judged else math.nan,
        "playback_fps": playback_fps,
    }
    if slo_s is not None:
        met = sum(1 for r in done if r.latency <= slo_s)
        summary["slo_s"] = slo_s
        summary["slo_attainment"] = met / len(records) if records else math.nan  # failures miss it
    return summary
