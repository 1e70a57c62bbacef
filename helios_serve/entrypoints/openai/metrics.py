"""Prometheus metrics of the server (one registry per app, so tests can run several).

Names follow vLLM's scheme (``vllm:num_requests_running`` -> ``helios:num_requests_running``) so
dashboards and alerts written for vLLM carry over; every ``helios:`` series has a ``model_name``
label (the served model name). The registry also holds the process and platform collectors
(``process_*``, ``python_info``) and the HTTP metrics of ``HttpMetrics``.
"""

from __future__ import annotations

import collections
import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from starlette.routing import Match

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920,
                           7680)
"""vLLM's buckets for whole-request times (e2e, queue): a video takes seconds to hours."""
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
FINISHED_REASONS = ("completed", "failed", "cancelled", "timeout")
"""Values of helios:request_success_total's finished_reason (a timeout is the server's max time)."""
FLOPS_WINDOW_S = 10.0
"""Achieved FLOP/s is averaged over the last this many seconds of wall time."""
UNMATCHED_ROUTE = "unmatched"
"""The route label of a request no route matches: raw paths would make the label unbounded."""
UNCOUNTED_ROUTES = frozenset({"/metrics", "/internal/status"})
"""Prometheus's scrapes and the Ray ingress's polls (twice a second) are not counted: they would
chart the pollers, not the users."""


class ServerMetrics:
    """The server's registry and what records into it: the job manager (per chunk and per ended
    job), the engine's step listener, HttpMetrics, and /metrics itself (queue gauges, FLOP/s)."""

    def __init__(self, model_name: str, clock=time.monotonic):
        # The _created series double every counter and histogram and no dashboard reads them.
        # The switch is global to prometheus_client; set here, it holds in the server and in tests.
        disable_created_metrics()
        self.model_name = model_name
        self.clock = clock
        self.started = clock()
        self.device_peak: float | None = None
        self.recent_flops: collections.deque[tuple[float, int]] = collections.deque()
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._families: dict[str, Counter | Gauge | Histogram] = {}
        self._declare_request_metrics()
        self._declare_engine_metrics()
        self._declare_http_metrics()

    # -- declarations ------------------------------------------------------------------------------
    def _family(self, kind, name: str, documentation: str, extra_labels: tuple[str, ...] = (), **options):
        family = kind(name, documentation, ("model_name", *extra_labels), registry=self.registry, **options)
        self._families[name] = family
        return family

    def _series(self, kind, name: str, documentation: str, **options):
        """The one series of a family whose only label is model_name."""
        return self._family(kind, name, documentation, **options).labels(self.model_name)

    def _declare_request_metrics(self) -> None:
        self.num_requests_running = self._series(Gauge, "helios:num_requests_running",
                                                 "Requests holding an engine slot")
        self.num_requests_waiting = self._series(Gauge, "helios:num_requests_waiting",
                                                 "Requests waiting for an engine slot")
        self.e2e_request_latency = self._series(
            Histogram, "helios:e2e_request_latency_seconds",
            "Submission to the engine (creation, or resumption after a restart) to the end of the job",
            buckets=REQUEST_LATENCY_BUCKETS)
        self.request_queue_time = self._series(Histogram, "helios:request_queue_time_seconds",
                                               "Arrival at the engine to admission into a slot (finished jobs)",
                                               buckets=REQUEST_LATENCY_BUCKETS)
        self.time_to_first_chunk = self._series(Histogram, "helios:time_to_first_chunk_seconds",
                                                "Submission to the first chunk", buckets=LATENCY_BUCKETS)
        self.chunk_seconds = self._series(Histogram, "helios:chunk_seconds", "Time between a job's consecutive chunks",
                                          buckets=LATENCY_BUCKETS)
        self.realtime_factor = self._series(Histogram, "helios:realtime_factor",
                                            "Per chunk: generated fps / playback fps",
                                            buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 4, 8, 16))
        self.frames_generated = self._series(Counter, "helios:frames_generated", "Frames generated")
        success = self._family(Counter, "helios:request_success", "Jobs finished, by how they ended",
                               ("finished_reason",))
        # Every reason is exported from the start, at 0, so rate() and alerts see the series at once.
        self.request_success = {reason: success.labels(self.model_name, reason) for reason in FINISHED_REASONS}

    def _declare_engine_metrics(self) -> None:
        self.batch_rows = self._series(Histogram, "helios:batch_rows", "Rows per transformer forward",
                                       buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64))
        self.step_seconds = self._series(Histogram, "helios:step_seconds", "Engine step latency",
                                         buckets=LATENCY_BUCKETS)
        self.model_flops = self._series(Counter, "helios:model_flops",
                                        "Transformer FLOPs executed (matmuls and attention)")
        self.model_flops_per_second = self._series(
            Gauge, "helios:model_flops_per_second", f"Achieved transformer FLOP/s over the last {FLOPS_WINDOW_S:g} s")
        # No series until the device's peak is known (set_device_peak): a 0 would read as an idle device.
        self._family(Gauge, "helios:device_peak_flops", "Peak FLOP/s of the device (see log for the source)")
        self._family(Gauge, "helios:model_flops_utilization", "Achieved transformer FLOP/s / the device's peak (MFU)")
        self._family(Gauge, "helios:attention_backend_info", "The attention kernel in use (value 1)", ("backend",))

    def _declare_http_metrics(self) -> None:
        self.http_requests = self._family(Counter, "helios:http_requests", "HTTP requests answered, by route template",
                                          ("method", "route", "status"))
        self.http_request_duration = self._family(
            Histogram, "helios:http_request_duration_seconds",
            "Arrival of an HTTP request to the start of its response (the headers of a stream)",
            ("method", "route"), buckets=HTTP_BUCKETS)

    # -- recording ----------------------------------------------------------------------------------
    def set_device_peak(self, flops: float | None) -> None:
        self.device_peak = flops
        if flops:
            self._families["helios:device_peak_flops"].labels(self.model_name).set(flops)

    def set_attention_backend(self, backend: str) -> None:
        self._families["helios:attention_backend_info"].labels(self.model_name, backend).set(1)

    def on_step(self, seconds: float, result) -> None:
        self.step_seconds.observe(seconds)
        if result.num_rows:
            self.batch_rows.observe(result.num_rows)
        if result.model_flops:
            self.model_flops.inc(result.model_flops)
            now = self.clock()
            self.recent_flops.append((now, result.model_flops))
            self._forget_before(now - FLOPS_WINDOW_S)  # bounded even when nobody scrapes /metrics

    def on_job_finished(self, reason: str, e2e_seconds: float, queue_seconds: float | None) -> None:
        """Once per job that ends, however it ends; ``queue_seconds`` is None for a job never admitted."""
        self.request_success[reason].inc()
        self.e2e_request_latency.observe(e2e_seconds)
        if queue_seconds is not None:
            self.request_queue_time.observe(queue_seconds)

    def on_http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(self.model_name, method, route, str(status)).inc()
        self.http_request_duration.labels(self.model_name, method, route).observe(seconds)

    # -- reading --------------------------------------------------------------------------------------
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
        self.num_requests_waiting.set(waiting)
        self.num_requests_running.set(running)
        achieved = self.achieved_flops_per_second()
        self.model_flops_per_second.set(achieved)
        if self.device_peak:
            self._families["helios:model_flops_utilization"].labels(self.model_name).set(achieved / self.device_peak)
        return generate_latest(self.registry)


class HttpMetrics:
    """ASGI middleware: counts each HTTP request by method, route template and status, and times it
    to the start of its response, so a stream (SSE, a video download) is counted when it begins,
    not when it ends. Installed outermost, it sees the refusals and 500s of the other middleware."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        arrived, entry = time.perf_counter(), dict(scope)  # routing adds to scope; matching needs it as it came
        status: int | None = None

        async def send_recording_start(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self._record(scope, entry, status, time.perf_counter() - arrived)
            await send(message)

        try:
            await self.app(scope, receive, send_recording_start)
        except Exception:
            if status is None:  # raised before answering: uvicorn answers a 500 (or drops the connection)
                self._record(scope, entry, 500, time.perf_counter() - arrived)
            raise

    def _record(self, scope, entry, status: int, seconds: float) -> None:
        route = route_template(scope, entry)
        if route not in UNCOUNTED_ROUTES:
            self.metrics.on_http_request(entry["method"], route, status, seconds)


def route_template(scope, entry) -> str:
    """The path template of the route that took (or would take) the request, e.g.
    ``/v1/videos/{video_id}``. FastAPI's routes record themselves in the scope; a request refused
    before routing, or one for a plain Starlette route (the docs), is matched here."""
    route = scope.get("route")
    if getattr(route, "path", None):
        return route.path
    partial = None
    for candidate in entry["app"].router.routes:
        match, _ = candidate.matches(entry)
        if match is Match.FULL:
            return candidate.path
        if match is Match.PARTIAL and partial is None:
            partial = candidate.path  # the path matched, the method did not (a 405)
    return partial or UNMATCHED_ROUTE
