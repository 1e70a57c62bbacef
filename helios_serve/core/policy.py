"""Ordering policies of the step scheduler, behind one small interface.

A policy gives two sort keys (smaller runs first): ``admission_key`` orders the waiting queue
(who gets a slot), ``service_key`` orders admitted requests (whose unit of work, and so whose
batch, runs next), and ``share_limit``: how much slower (a fraction, by the cost model) the
first request's forward may become for others to join it; None lets every compatible request
join. FCFS serves the oldest request first and never starves anyone (the oldest is always
served); the others age requests by the time since they were last served.
"""

from __future__ import annotations

from typing import Protocol

from ..request import Request


class SchedulingPolicy(Protocol):
    share_limit: float | None

    def admission_key(self, request: Request, now: float) -> tuple: ...

    def service_key(self, request: Request, now: float) -> tuple: ...


class FCFSPolicy:
    """Requests finish in arrival order: the oldest admitted one is served first, and a younger
    one's denoising step joins its forward only when that slows the forward by at most
    ``max_share_slowdown``. On a compute-bound forward batching gains little (1.05-1.2x,
    performance-model.md §3.8) while it makes every request wait for all the others, so
    most requests finish sooner one after another than all together."""

    def __init__(self, config):
        self.share_limit = config.max_share_slowdown

    def admission_key(self, request: Request, now: float) -> tuple:
        return (request.arrival_time,)

    def service_key(self, request: Request, now: float) -> tuple:
        return (request.arrival_time,)


class RoundRobinPolicy:
    """Slots in arrival order; admitted requests take turns (least recently served first) and
    share every forward they can: all advance together, and finish together."""

    share_limit = None

    def __init__(self, config=None):
        pass

    def admission_key(self, request: Request, now: float) -> tuple:
        return (request.arrival_time,)

    def service_key(self, request: Request, now: float) -> tuple:
        return (request.last_served_step, request.arrival_time)


class PriorityPolicy:
    """Lower priority values first; waiting gains one level per ``priority_aging_s`` seconds."""

    share_limit = None

    def __init__(self, config):
        self.aging_s = config.priority_aging_s

    def _effective(self, request: Request, since: float, now: float) -> float:
        return request.priority - (now - since) / self.aging_s

    def admission_key(self, request: Request, now: float) -> tuple:
        return (self._effective(request, request.arrival_time, now), request.arrival_time)

    def service_key(self, request: Request, now: float) -> tuple:
        return (self._effective(request, request.last_served_time, now), request.last_served_step)


class DeadlinePolicy:
    """Earliest deadline first: a real-time stream's next chunk is due at arrival + k * 33 / fps.

    Other requests are due ``background_slack_s`` after their last service, so they keep
    moving whenever the streams have slack, and cannot be starved by them.
    """

    share_limit = None

    def __init__(self, config):
        self.slack_s = config.background_slack_s

    def _due(self, request: Request, since: float) -> float:
        deadline = request.chunk_deadline()
        return deadline if deadline is not None else since + self.slack_s

    def admission_key(self, request: Request, now: float) -> tuple:
        return (self._due(request, request.arrival_time), request.arrival_time)

    def service_key(self, request: Request, now: float) -> tuple:
        return (self._due(request, request.last_served_time), request.last_served_step)


POLICIES: dict[str, type] = {
    "fcfs": FCFSPolicy, "round-robin": RoundRobinPolicy, "priority": PriorityPolicy, "deadline": DeadlinePolicy,
}
