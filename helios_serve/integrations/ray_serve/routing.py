"""Routing decisions of the Ray ingress, kept free of Ray, HTTP and torch so they are plain to test.

- New work goes to the ready replica with the least queued + running requests, counting the
  creates sent to it that its last status answer may not have seen yet.
- A job's requests go to the replica that owns it (the job store records the owner).
- A replica instance is dead once its slot reports a new instance (Ray Serve restarted it) or
  has not answered for ``DEAD_AFTER_S``; its unfinished jobs are then handed to a living replica.
- /metrics of all replicas are merged: every series once per replica, plus the total.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

DEAD_AFTER_S = 10.0
SLOW_AFTER_S = 3.0
"""A replica silent for longer is taken out of rotation (a busy one may miss a 2 s poll or two)."""


@dataclass
class ReplicaView:
    """What the router knows of one replica slot (one Ray Serve deployment of one replica)."""

    slot: str
    url: str | None = None
    instance: str | None = None
    ready: bool = False
    load_error: str | None = None
    """Why its model did not load, as its last answer said (Ray Serve then restarts it)."""
    waiting: int = 0
    running: int = 0
    last_seen: float | None = None
    """Monotonic time of the last answer; None if it never answered."""
    past_instances: set[str] = field(default_factory=set)
    """Instances this slot had before a restart: certainly dead."""
    creates_sent: int = 0
    """Creates the ingress has sent to this slot, ever (a status answer says nothing of those
    sent after the poll asked, so they are added to what it reports)."""

    @property
    def load(self) -> int:
        return self.waiting + self.running

    def record_create(self, count: int = 1) -> None:
        """Creates (or adopted jobs) just sent here: counted at once, so a burst spreads out."""
        self.creates_sent += count
        self.waiting += count

    def record_answer(self, status: dict, url: str, now: float, creates_sent_before: int | None = None) -> None:
        """A status answer to a poll that began when ``creates_sent`` was ``creates_sent_before``."""
        if self.instance is not None and status["instance"] != self.instance:
            self.past_instances.add(self.instance)
        self.instance, self.url, self.last_seen = status["instance"], url, now
        self.ready, self.load_error = bool(status["ready"]), status.get("load_error")
        unseen = self.creates_sent - (self.creates_sent if creates_sent_before is None else creates_sent_before)
        self.waiting, self.running = int(status["waiting"]) + unseen, int(status["running"])

    def record_silence(self, now: float) -> None:
        silent_for = None if self.last_seen is None else now - self.last_seen
        if silent_for is None or silent_for >= SLOW_AFTER_S:
            self.ready = False
        if self.instance is not None and silent_for is not None and silent_for >= DEAD_AFTER_S:
            self.past_instances.add(self.instance)
            self.instance = None


def least_loaded(replicas: list[ReplicaView], avoid: str | None = None) -> ReplicaView | None:
    """The ready replica with the least work (ties: slot order); ``avoid`` a slot if another is ready."""
    ready = [r for r in replicas if r.ready and r.url]
    preferred = [r for r in ready if r.slot != avoid] or ready
    return min(preferred, key=lambda r: (r.load, r.slot), default=None)


def dead_instances(replicas: list[ReplicaView]) -> dict[str, str]:
    """Dead instance id -> the slot it belonged to."""
    return {instance: r.slot for r in replicas for instance in r.past_instances}


def orphaned_jobs(active_jobs: list[tuple[str, str | None]], replicas: list[ReplicaView]) -> dict[str, list[str]]:
    """Unfinished jobs (id, owner) whose owner is dead, grouped by that owner."""
    dead = dead_instances(replicas)
    orphans: dict[str, list[str]] = defaultdict(list)
    for job_id, owner in active_jobs:
        if owner in dead:
            orphans[owner].append(job_id)
    return dict(orphans)


# Gauges whose total is a ratio of two summed gauges, not a sum: the cluster's utilisation is
# its achieved FLOP/s over its peak.
RATIO_GAUGES = {"helios:model_flops_utilization": ("helios:model_flops_per_second", "helios:device_peak_flops")}
# Families whose sum over replicas means nothing (a start time, a limit, a version): per replica only.
PER_REPLICA_ONLY = {"process_start_time_seconds", "process_max_fds", "python_info"}


def merge_metrics(texts: dict[str, str]) -> str:
    """Prometheus exposition of several replicas: each series with a ``replica`` label, and the
    sum over replicas without it (counters, gauges, histogram buckets and sums add up; the
    RATIO_GAUGES are recomputed from their summed parts; PER_REPLICA_ONLY have no total)."""
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, tuple[str, str, str]] = {}
    per_replica: dict[str, list[str]] = defaultdict(list)
    totals: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
    for slot, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            # The text format names a counter family by its _total series.
            name = f"{family.name}_total" if family.type == "counter" else family.name
            families.setdefault(family.name, (name, family.type, family.documentation))
            for sample in family.samples:
                if sample.name.endswith("_created"):  # creation timestamps do not add up
                    continue
                labels = tuple(sorted(sample.labels.items()))
                per_replica[family.name].append(_sample_line(sample.name, (("replica", slot), *labels), sample.value))
                if family.name not in PER_REPLICA_ONLY:
                    totals[family.name][(sample.name, labels)] += sample.value
    for ratio, parts in RATIO_GAUGES.items():
        totals[ratio] = _ratio_totals(ratio, *(totals[part] for part in parts))
    lines = []
    for family, (name, kind, documentation) in families.items():
        lines += [f"# HELP {name} {documentation}", f"# TYPE {name} {kind}"]
        lines += [_sample_line(sample, labels, value) for (sample, labels), value in totals[family].items()]
        lines += per_replica[family]
    return "\n".join(lines) + "\n"


def _ratio_totals(ratio: str, numerators: dict[tuple, float], denominators: dict[tuple, float]) -> dict[tuple, float]:
    """numerator / denominator for each label set (model_name) both have; keyed like ``totals``."""
    numerator = {labels: value for (_, labels), value in numerators.items()}
    return {(ratio, labels): numerator.get(labels, 0.0) / value
            for (_, labels), value in denominators.items() if value}


def replica_count_metrics(model_name: str, ready: int, deployed: int) -> str:
    """The ingress's own gauges, labelled with the served model name like every ``helios:`` series
    of the replicas, so one ``model_name`` selector picks a deployment's series."""
    labels = (("model_name", model_name),)
    lines = [
        "# HELP helios:replicas_ready Engine replicas ready to serve.", "# TYPE helios:replicas_ready gauge",
        _sample_line("helios:replicas_ready", labels, float(ready)),
        "# HELP helios:replicas Engine replicas deployed.", "# TYPE helios:replicas gauge",
        _sample_line("helios:replicas", labels, float(deployed)),
    ]
    return "\n".join(lines) + "\n"


def _sample_line(name: str, labels: tuple, value: float) -> str:
    rendered = ",".join(f'{key}="{_escape(str(val))}"' for key, val in labels)
    return f"{name}{{{rendered}}} {value!r}" if rendered else f"{name} {value!r}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
