"""Prometheus metrics of a node, on `/metrics`. One registry per runtime, not the global one,
so several nodes in one process (tests, benchmarks) keep their own counts.

Labels stay bounded: function names and versions come from deployments, status is a class
(2xx...), reasons are the platform's own error codes, regions come from the snapshot; never
paths, client addresses or request ids. Series of versions a deployment no longer serves are
dropped when it is replaced (`retain`), so a node that sees a thousand deploys does not export
a thousand versions. The node and its region are on `edge_node_info`, not on every series.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge.errors import DeadlineExceeded, FunctionError, FunctionTrapped, MemoryLimitExceeded
from edge.sandbox.compile_cache import CacheStats
from edge.sandbox.tiering import TierStats

# 50 µs to 10 s, roughly x2 apart: fine enough to read p50/p99 of a C hello and of a slow call.
LATENCY_BUCKETS_S = (
    0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
    1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
# 5 µs to 100 ms: a reused C instance is ~30 µs, a fresh one ~90, a Python component ~1-3 ms.
INSTANTIATE_BUCKETS_S = (
    0.000005, 0.00001, 0.00002, 0.00003, 0.00005, 0.000075, 0.0001, 0.00015, 0.0002, 0.0003,
    0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1,
)  # fmt: skip

Key = tuple[str, str]  # (function, version); version "" for functions without one (node.toml)


class NodeMetrics:
    def __init__(
        self,
        node_id: str = "",
        region: str = "",
        cache: CacheStats | None = None,
        revision: Callable[[], int | None] = lambda: None,
        now: Callable[[], float] = time.time,
        tiers: TierStats | None = None,
    ) -> None:
        self.now = now
        # Tells the control plane which life of the node the counters belong to: a restarted
        # node counts from zero again, and must not look like negative traffic.
        self.started_unix = now()
        self.registry = CollectorRegistry()
        r = self.registry
        fv = ["function", "version"]
        self.requests = Counter(
            "edge_function_requests", "Function requests by outcome",
            [*fv, "status_class"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "edge_function_duration_seconds", "Time from routing to the function's answer",
            fv, buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.instantiate = Histogram(
            "edge_function_instantiate_seconds",
            "Time to create a store and instantiate the component (fresh instances only)",
            fv, buckets=INSTANTIATE_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "edge_function_errors", "Platform errors about a function, by reason",
            [*fv, "reason"], registry=r,
        )  # fmt: skip
        self.traps = Counter(
            "edge_function_traps", "Requests whose function trapped", fv, registry=r
        )
        self.deadlines = Counter(
            "edge_function_deadline_overruns", "Requests stopped at their deadline", fv, registry=r
        )
        self.memory_kills = Counter(
            "edge_function_memory_limit_kills",
            "Requests stopped because the function needed more memory than its limit",
            fv, registry=r,
        )  # fmt: skip
        self.bytes_in = Counter(
            "edge_function_request_bytes", "Request body bytes", fv, registry=r
        )
        self.bytes_out = Counter(
            "edge_function_response_bytes", "Response body bytes", fv, registry=r
        )
        self.in_flight = Gauge("edge_node_in_flight_requests", "Requests being served", registry=r)
        self.spills = Counter(
            "edge_node_spills", "Requests forwarded to another region", ["to_region"], registry=r
        )
        Gauge(
            "edge_node_info", "This node (value 1)", ["node", "region"], registry=r
        ).labels(node_id, region).set(1)
        r.register(_ScrapeTime(cache or CacheStats(), revision, tiers or TierStats()))
        self._series: dict[Key, FunctionSeries] = {}
        self._retired_requests = 0  # requests counted by series dropped since (requests_total)

    def series(self, function: str, version: str) -> FunctionSeries:
        s = self._series.get((function, version))
        if s is None:
            s = self._series[(function, version)] = FunctionSeries(self, function, version)
        return s

    def retain(self, live: Iterable[Key]) -> None:
        """Drops the series of every (function, version) not in `live`. A request of a dropped
        version still in flight counts into a detached child: lost, not re-created."""
        keep = set(live)
        gone = [self._series.pop(k) for k in list(self._series) if k not in keep]
        if gone:
            before = _total(self.requests)
            for series in gone:
                series.remove()
            self._retired_requests += int(before - _total(self.requests))

    def latency_counts(self) -> Iterator[tuple[Key, float, list[float]]]:
        """Per (function, version) served, sorted: when its series began counting and its
        latency histogram's cumulative bucket counts (one per bound, then +Inf)."""
        for key, s in sorted(self._series.items()):
            cumulative = [sample.value for metric in s.latency.collect()
                          for sample in metric.samples if sample.name.endswith("_bucket")]
            yield key, s.since_unix, cumulative

    def requests_total(self) -> int:
        """Function requests served since start (all labels): nodes report it, and the control
        plane turns two reports into requests per second."""
        return self._retired_requests + int(_total(self.requests))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class FunctionSeries:
    """The children of every per-function metric for one (function, version), bound once:
    `labels()` takes a lock and builds a key, and requests would pay that six times each."""

    def __init__(self, m: NodeMetrics, function: str, version: str) -> None:
        self.m = m
        self.key = (function, version)
        self.since_unix = m.now()  # made by the first request of this (function, version)
        self.latency = m.latency.labels(function, version)
        self.instantiate = m.instantiate.labels(function, version)
        self.bytes_in = m.bytes_in.labels(function, version)
        self.bytes_out = m.bytes_out.labels(function, version)
        # The sandbox's kills also have counters of their own, besides errors by reason.
        self.kills: dict[str, Counter] = {
            FunctionTrapped.reason: m.traps.labels(function, version),
            DeadlineExceeded.reason: m.deadlines.labels(function, version),
            MemoryLimitExceeded.reason: m.memory_kills.labels(function, version),
        }
        self._requests: dict[int, Counter] = {}
        self._errors: dict[str, Counter] = {}

    def answered(self, status: int) -> None:
        child = self._requests.get(status // 100)
        if child is None:
            child = self._requests[status // 100] = self.m.requests.labels(
                *self.key, status_class(status)
            )
        child.inc()

    def failed(self, error: FunctionError) -> None:
        child = self._errors.get(error.reason)
        if child is None:
            child = self._errors[error.reason] = self.m.errors.labels(*self.key, error.reason)
        child.inc()
        kill = self.kills.get(error.reason)
        if kill is not None:
            kill.inc()
        self.answered(error.status)

    def remove(self) -> None:
        """Takes this series out of the registry."""
        m = self.m
        for metric in (m.latency, m.instantiate, m.bytes_in, m.bytes_out, m.traps, m.deadlines,
                       m.memory_kills):  # fmt: skip
            metric.remove(*self.key)
        for cls in self._requests:
            m.requests.remove(*self.key, f"{cls}xx")
        for reason in self._errors:
            m.errors.remove(*self.key, reason)


class _ScrapeTime(Collector):
    """What the node already counts elsewhere, read when scraped rather than on each event."""

    def __init__(
        self, cache: CacheStats, revision: Callable[[], int | None], tiers: TierStats
    ) -> None:
        self.cache = cache
        self.revision = revision
        self.tiers = tiers

    def collect(self) -> Iterator[Metric]:
        lookups = CounterMetricFamily(
            "edge_node_compile_cache_lookups", "Compile cache lookups since start",
            labels=["result"],
        )  # fmt: skip
        lookups.add_metric(["hit"], self.cache.hits)
        lookups.add_metric(["miss"], self.cache.misses)
        yield lookups
        tier_ups = CounterMetricFamily(
            "edge_function_tier_ups",
            "Functions switched from baseline (Winch) to optimised code since start, and "
            "optimised compiles that failed (the baseline code serves on)",
            labels=["result"],
        )
        tier_ups.add_metric(["ok"], self.tiers.ups)
        tier_ups.add_metric(["failed"], self.tiers.failures)
        yield tier_ups
        revision = self.revision()
        if revision is not None:
            yield GaugeMetricFamily(
                "edge_node_applied_revision", "Control plane revision applied", value=revision
            )


def _total(counter: Counter) -> float:
    return sum(
        sample.value
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def status_class(status: int) -> str:
    return f"{status // 100}xx"
