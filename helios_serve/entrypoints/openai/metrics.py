"""Prometheus metrics of the server (one registry per app, so tests can run several)."""

from __future__ import annotations

import collections
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
FLOPS_WINDOW_S = 10.0
"""Achieved FLOP/s is averaged over the last this many seconds of wall time."""


class ServerMetrics:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.started = clock()
        self.device_peak: float | None = None
        self.recent_flops: collections.deque[tuple[float, int]] = collections.deque()
        self.registry = registry = CollectorRegistry()
        self.queue_depth = Gauge("helios_queue_depth", "Requests waiting for an engine slot", registry=registry)
        self.running = Gauge("helios_running_requests", "Requests holding an engine slot", registry=registry)
        self.batch_rows = Histogram("helios_batch_rows", "Rows per transformer forward",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64), registry=registry)
        self.step_seconds = Histogram("helios_step_seconds", "Engine step latency", buckets=LATENCY_BUCKETS,
                                      registry=registry)
        self.chunk_seconds = Histogram("helios_chunk_seconds", "Time between a job's consecutive chunks",
                                       buckets=LATENCY_BUCKETS, registry=registry)
        self.ttfc_seconds = Histogram("helios_time_to_first_chunk_seconds", "Submission to first chunk",
                                      buckets=LATENCY_BUCKETS, registry=registry)
        self.realtime_factor = Histogram("helios_realtime_factor", "Per chunk: generated fps / playback fps",
                                         buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 4, 8, 16), registry=registry)
        self.frames = Counter("helios_frames_generated", "Frames generated", registry=registry)
        self.completed = Counter("helios_requests_completed", "Jobs completed", registry=registry)
        self.failed = Counter("helios_requests_failed", "Jobs failed", registry=registry)
        self.cancelled = Counter("helios_requests_cancelled", "Jobs cancelled or timed out", registry=registry)
        self.model_flops = Counter("helios_model_flops", "Transformer FLOPs executed (matmuls and attention)",
                                   registry=registry)
        self.flops_per_second = Gauge("helios_model_flops_per_second",
                                      f"Achieved transformer FLOP/s over the last {FLOPS_WINDOW_S:g} s",
                                      registry=registry)
        self.peak_flops = Gauge("helios_device_peak_flops", "Peak FLOP/s of the device (see log for the source)",
                                registry=registry)
        self.utilization = Gauge("helios_model_flops_utilization",
                                 "Achieved transformer FLOP/s / the device's peak (MFU)", registry=registry)
        self.attention_backend = Gauge("helios_attention_backend_info", "The attention kernel in use (value 1)",
                                       ["backend"], registry=registry)

    def set_device_peak(self, flops: float | None) -> None:
        self.device_peak = flops
        if flops:
            self.peak_flops.set(flops)

    def on_step(self, seconds: float, result) -> None:
        self.step_seconds.observe(seconds)
        if result.num_rows:
            self.batch_rows.observe(result.num_rows)
        if result.model_flops:
            self.model_flops.inc(result.model_flops)
            now = self.clock()
            self.recent_flops.append((now, result.model_flops))
            self._forget_before(now - FLOPS_WINDOW_S)  # bounded even when nobody scrapes /metrics

    def _forget_before(self, moment: float) -> None:
        while self.recent_flops and self.recent_flops[0][0] < moment:
            self.recent_flops.popleft()

    def achieved_flops_per_second(self) -> float:
        now = self.clock()
        self._forget_before(now - FLOPS_WINDOW_S)
        # Right after start-up the window is shorter than FLOPS_WINDOW_S.
        span = max(min(FLOPS_WINDOW_S, now - self.started), 1e-9)
        return sum(flops for _, flops in self.recent_flops) / span

    def exposition(self, waiting: int, running: int) -> bytes:
        self.queue_depth.set(waiting)
        self.running.set(running)
        achieved = self.achieved_flops_per_second()
        self.flops_per_second.set(achieved)
        if self.device_peak:
            self.utilization.set(achieved / self.device_peak)
        return generate_latest(self.registry)
