"""Prometheus metrics of a node, on `/metrics`. One registry per runtime, not the global one,
so several nodes in one process (tests, benchmarks) keep their own counts.

Labels stay bounded: function names and versions come from deployments, status is a class
(2xx...), reasons are the platform's own error codes, regions come from the snapshot; never
paths, client addresses or request ids. Series of versions a deployment no longer serves are
dropped when it is replaced (`retain`), so a node that sees a thousand deploys does not export
a thousand versions. The node and its region are on `edge_node_info`, not on every series.

The per-function series and the in-flight gauge are plain numbers that requests add to, turned
into metric families when scraped (`_Tally`): prometheus-client's children take a lock and check
their arguments on every update, ~1 µs each, and a request made seven of them (measured 9 µs of
a C hello's ~60 µs in process). Requests update them on the event loop's thread only.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from edge.errors import (
    DeadlineExceeded,
    FunctionError,
    FunctionOverloaded,
    FunctionTrapped,
    MemoryLimitExceeded,
)
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
        ticker: str = "",
        invoke: str = "",
    ) -> None:
        self.now = now
        # Tells the control plane which life of the node the counters belong to: a restarted
        # node counts from zero again, and must not look like negative traffic.
        self.started_unix = now()
        self.registry = CollectorRegistry()
        r = self.registry
        # Requests being served: see _Tally (a Gauge would take a lock twice a request).
        self.in_flight = 0
        self.queued: Callable[[], int] = lambda: 0  # of them, waiting for a worker (the app's)
        self.spills = Counter(
            "edge_node_spills", "Requests forwarded to another region", ["to_region"], registry=r
        )
        Gauge(
            "edge_node_info", "This node (value 1)", ["node", "region"], registry=r
        ).labels(node_id, region).set(1)
        for name, about, label, kind in (
            ("edge_node_epoch_ticker", "The epoch ticker behind deadlines", "ticker", ticker),
            ("edge_node_invoke", "How C functions' fresh requests run", "invoke", invoke),
        ):
            if kind:
                about += " (value 1): native, or the python fallback"
                Gauge(name, about, [label], registry=r).labels(kind).set(1)
        self._series: dict[Key, FunctionSeries] = {}
        r.register(_Tally(self))
        r.register(_ScrapeTime(cache or CacheStats(), revision, tiers or TierStats()))
        self._retired_requests = 0  # requests counted by series dropped since (requests_total)

    def series(self, function: str, version: str) -> FunctionSeries:
        s = self._series.get((function, version))
        if s is None:
            s = self._series[(function, version)] = FunctionSeries(self.now(), function, version)
        return s

    def all_series(self) -> list[FunctionSeries]:
        """A snapshot (deploys may add and drop series meanwhile), sorted by key."""
        return [s for _, s in sorted(list(self._series.items()))]

    def retain(self, live: Iterable[Key]) -> None:
        """Drops the series of every (function, version) not in `live`. A request of a dropped
        version still in flight counts into a detached series: lost, not re-created."""
        keep = set(live)
        gone = [self._series.pop(k) for k in list(self._series) if k not in keep]
        self._retired_requests += sum(s.requests_total() for s in gone)

    def latency_counts(self) -> Iterator[tuple[Key, float, list[float]]]:
        """Per (function, version) served, sorted: when its series began counting and its
        latency histogram's cumulative bucket counts (one per bound, then +Inf)."""
        for s in self.all_series():
            yield s.key, s.since_unix, [float(c) for c in s.latency.cumulative()]

    def requests_total(self) -> int:
        """Function requests served since start (all labels): nodes report it, and the control
        plane turns two reports into requests per second."""
        return self._retired_requests + sum(s.requests_total() for s in self.all_series())

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class Buckets:
    """One histogram's counts as plain numbers: `observe` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf's
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # A value equal to a bound counts into that bound's bucket (`le`: less or equal).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[int]:
        return list(accumulate(self.counts))


class FunctionSeries:
    """What one (function, version) served, counted as plain numbers (see _Tally)."""

    def __init__(self, since_unix: float, function: str, version: str) -> None:
        self.key = (function, version)
        self.since_unix = since_unix  # made by the first request of this (function, version)
        self.latency = Buckets(LATENCY_BUCKETS_S)
        self.instantiate = Buckets(INSTANTIATE_BUCKETS_S)
        self.bytes_in = 0
        self.bytes_out = 0
        self.requests: dict[int, int] = {}  # by status // 100
        self.errors: dict[str, int] = {}  # by reason
        # The sandbox's kills also have counters of their own, besides errors by reason.
        self.kills: dict[str, int] = dict.fromkeys(KILLS, 0)

    def answered(self, status: int) -> None:
        cls = status // 100
        self.requests[cls] = self.requests.get(cls, 0) + 1

    def failed(self, error: FunctionError | FunctionOverloaded) -> None:
        self.errors[error.reason] = self.errors.get(error.reason, 0) + 1
        if error.reason in self.kills:
            self.kills[error.reason] += 1
        self.answered(error.status)

    def requests_total(self) -> int:
        return sum(list(self.requests.values()))


# Kill reason -> its counter's name and help.
KILLS = {
    FunctionTrapped.reason: ("edge_function_traps", "Requests whose function trapped"),
    DeadlineExceeded.reason: (
        "edge_function_deadline_overruns", "Requests stopped at their deadline"
    ),
    MemoryLimitExceeded.reason: (
        "edge_function_memory_limit_kills",
        "Requests stopped because the function needed more memory than its limit",
    ),
}


class _Tally(Collector):
    """The per-function series and the in-flight gauge, as metric families when scraped: the
    same names, labels and samples (`_created` included) as prometheus-client's own."""

    def __init__(self, m: NodeMetrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        fv = ["function", "version"]
        series = self.m.all_series()
        requests = CounterMetricFamily(
            "edge_function_requests", "Function requests by outcome", labels=[*fv, "status_class"]
        )
        errors = CounterMetricFamily(
            "edge_function_errors", "Platform errors about a function, by reason",
            labels=[*fv, "reason"],
        )  # fmt: skip
        kills = {r: CounterMetricFamily(n, h, labels=fv) for r, (n, h) in KILLS.items()}
        bytes_in = CounterMetricFamily(
            "edge_function_request_bytes", "Request body bytes", labels=fv
        )
        bytes_out = CounterMetricFamily(
            "edge_function_response_bytes", "Response body bytes", labels=fv
        )
        latency = HistogramMetricFamily(
            "edge_function_duration_seconds", "Time from routing to the function's answer",
            labels=fv,
        )  # fmt: skip
        instantiate = HistogramMetricFamily(
            "edge_function_instantiate_seconds",
            "Time to create a store and instantiate the component (fresh instances only)",
            labels=fv,
        )
        for s in series:
            key, created = list(s.key), s.since_unix
            for cls, n in sorted(list(s.requests.items())):
                requests.add_metric([*key, f"{cls}xx"], n, created)
            for reason, n in sorted(list(s.errors.items())):
                errors.add_metric([*key, reason], n, created)
            for reason, n in list(s.kills.items()):
                kills[reason].add_metric(key, n, created)
            bytes_in.add_metric(key, s.bytes_in, created)
            bytes_out.add_metric(key, s.bytes_out, created)
            _histogram(latency, key, s.latency, created)
            _histogram(instantiate, key, s.instantiate, created)
        yield requests
        yield latency
        yield instantiate
        yield errors
        yield from kills.values()
        yield bytes_in
        yield bytes_out
        yield GaugeMetricFamily(
            "edge_node_in_flight_requests", "Requests being served", value=self.m.in_flight
        )
        yield GaugeMetricFamily(
            "edge_node_queued_requests",
            "Function requests waiting for a worker (their function's share is taken)",
            value=self.m.queued(),
        )


def _le(bound: float) -> str:
    """A bucket bound as prometheus-client writes it in `le` (5e-05, 0.0001, 1.0)."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


def _histogram(family: HistogramMetricFamily, key: list[str], b: Buckets, created: float) -> None:
    bounds = [*(_le(x) for x in b.bounds), "+Inf"]
    family.add_metric(key, list(zip(bounds, b.cumulative(), strict=True)), b.sum)
    family.add_sample(
        family.name + "_created", dict(zip(["function", "version"], key, strict=True)), created
    )


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
        yield CounterMetricFamily(
            "edge_node_compile_cache_unstored",
            "Compiled components the compile cache's directory could not take (a full disk, a"
            " directory gone): they serve from memory and compile again at restart",
            value=self.cache.unstored,
        )
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


def status_class(status: int) -> str:
    return f"{status // 100}xx"
