"""Prometheus metrics of the server (one registry per app, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServerMetrics:
    def __init__(self):
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

    def on_step(self, seconds: float, rows: int) -> None:
        self.step_seconds.observe(seconds)
        if rows:
            self.batch_rows.observe(rows)

    def exposition(self, waiting: int, running: int) -> bytes:
        self.queue_depth.set(waiting)
        self.running.set(running)
        return generate_latest(self.registry)
