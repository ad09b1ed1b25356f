"""Live request rate and latency per function and region, from nodes' traffic reports (pure).

A node reports, per (function, version), counters since it started: a latency histogram with
the fixed bounds of `/metrics` (edge.node.traffic_report), whose sum is the request count. For each
(node, function, version) the window keeps the last report as a baseline and the differences
between consecutive reports, stamped with the time they arrived, for `window_s` seconds. Then:

- rate = requests in the window / the time the window covers for that series (the window, or
  less while the series is new, so a fresh series is not under-counted);
- p50/p99 come from the window's bucket counts merged over nodes and versions, interpolated
  inside the bucket the rank falls in, like Prometheus' histogram_quantile.

A counter that goes down, or a new `started_unix`, means the node restarted: its counts are
then all new. So are the counts of a series we have not seen before whose first request (its
`since_unix`) is less than a window ago; otherwise a first report is only a baseline. Time is
injected; the server passes the wall clock, tests a fake one. State is in memory only: after a
control plane restart the first report of each node is a new baseline.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from edge.config.function import NAME_RE
from edge.control.errors import PayloadTooLarge
from edge.errors import BadRequest
from edge.node.metrics import LATENCY_BUCKETS_S
from edge.node.traffic_report import BUCKET_COUNT

MAX_SERIES_PER_REPORT = 1000
MAX_COUNT = 2**53  # what a JSON number carries exactly; also what JavaScript reads exactly

Buckets = tuple[int, ...]


@dataclass(frozen=True)
class Series:
    function: str  # "<tenant>/<name>" as routed on the node
    version: str
    since_unix: float  # when the node counted this series' first request
    buckets: Buckets


@dataclass(frozen=True)
class TrafficReport:
    node_id: str
    region: str
    started_unix: float
    series: tuple[Series, ...]


def _text(body: dict[str, Any], key: str, limit: int, where: str = "") -> str:
    value = body.get(key)
    if not isinstance(value, str) or len(value) > limit:
        raise BadRequest(f"{where}{key!r} must be a string of at most {limit} characters")
    return value


def parse_report(body: dict[str, Any]) -> TrafficReport:
    """Checks a traffic report's shape; anything off is a BadRequest naming the field."""
    node_id = _text(body, "node_id", 128)
    region = _text(body, "region", 64)
    if not node_id or not region:
        raise BadRequest("node_id and region must not be empty")
    started = _seconds(body, "started_unix")
    raw = body.get("series")
    if not isinstance(raw, list):
        raise BadRequest("series must be a list")
    if len(raw) > MAX_SERIES_PER_REPORT:
        raise PayloadTooLarge(f"at most {MAX_SERIES_PER_REPORT} series per report")
    series = []
    for i, entry in enumerate(raw):
        where = f"series[{i}]: "
        if not isinstance(entry, dict):
            raise BadRequest(f"{where}must be an object")
        function = _text(entry, "function", 200, where)
        tenant, _, name = function.partition("/")
        if not tenant or not NAME_RE.match(name):
            raise BadRequest(f"{where}function must be TENANT/NAME, got {function!r}")
        version = _text(entry, "version", 32, where)
        since = _seconds(entry, "since_unix", where)
        buckets = entry.get("buckets")
        if (
            not isinstance(buckets, list)
            or len(buckets) != BUCKET_COUNT
            or not all(type(c) is int and 0 <= c < MAX_COUNT for c in buckets)
        ):
            raise BadRequest(f"{where}buckets must be {BUCKET_COUNT} counts (integers >= 0)")
        series.append(Series(function, version, since, tuple(buckets)))
    return TrafficReport(node_id, region, started, tuple(series))


def _seconds(body: dict[str, Any], key: str, where: str = "") -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 2**40:
        raise BadRequest(f"{where}{key!r} must be a unix time in seconds")
    return float(value)


def quantile(q: float, buckets: Buckets) -> float | None:
    """The q-quantile in seconds of a histogram with LATENCY_BUCKETS_S bounds (None: empty).
    Linear inside the bucket; a rank in the overflow bucket answers the highest bound."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for i, count in enumerate(buckets):
        if count and below + count >= rank:
            if i == len(LATENCY_BUCKETS_S):
                return LATENCY_BUCKETS_S[-1]
            lower = 0.0 if i == 0 else LATENCY_BUCKETS_S[i - 1]
            upper = LATENCY_BUCKETS_S[i]
            return lower + (upper - lower) * max(0.0, rank - below) / count
        below += count
    return LATENCY_BUCKETS_S[-1]  # unreachable: the loop ends at the last non-empty bucket


def merge(histograms: Iterable[Buckets]) -> Buckets:
    total = [0] * BUCKET_COUNT
    for h in histograms:
        for i, c in enumerate(h):
            total[i] += c
    return tuple(total)


@dataclass
class _Track:
    """One (node, function, version): the last counters and recent differences."""

    region: str
    started_unix: float
    baseline: Buckets
    since_unix: float  # when the baseline was first taken
    last_report_unix: float
    deltas: deque[tuple[float, Buckets]] = field(default_factory=deque)


class TrafficWindow:
    def __init__(
        self,
        window_s: float = 10.0,
        now: Callable[[], float] = time.time,
        forget_after_s: float = 600.0,
        max_tracks: int = 20_000,
    ) -> None:
        self.window_s = window_s
        self.now = now
        # Nodes report only when something changed, so an idle series keeps its baseline this
        # long; after that its next report is a new baseline (its first differences are lost).
        self.forget_after_s = forget_after_s
        self.max_tracks = max_tracks
        self.refused = 0  # series not tracked because max_tracks was reached
        self._tracks: dict[tuple[str, str, str], _Track] = {}

    def add(self, report: TrafficReport) -> None:
        now = self.now()
        self._prune(now)
        for s in report.series:
            key = (report.node_id, s.function, s.version)
            track = self._tracks.get(key)
            if track is None:
                if len(self._tracks) >= self.max_tracks:
                    self.refused += 1
                    continue
                track = self._tracks[key] = _Track(
                    report.region, report.started_unix, s.buckets, now, now
                )
                # A series younger than the window counted everything it reports inside it.
                if now - s.since_unix < self.window_s and any(s.buckets):
                    track.since_unix = min(s.since_unix, now)
                    track.deltas.append((now, s.buckets))
                continue
            restarted = track.started_unix != report.started_unix or any(
                new < old for new, old in zip(s.buckets, track.baseline, strict=True)
            )
            delta = s.buckets if restarted else tuple(
                new - old for new, old in zip(s.buckets, track.baseline, strict=True)
            )  # fmt: skip
            if any(delta):
                track.deltas.append((now, delta))
            track.region = report.region
            track.started_unix = report.started_unix
            track.baseline = s.buckets
            track.last_report_unix = now

    def _prune(self, now: float) -> None:
        for key, track in list(self._tracks.items()):
            if now - track.last_report_unix > self.forget_after_s:
                del self._tracks[key]
                continue
            while track.deltas and track.deltas[0][0] <= now - self.window_s:
                track.deltas.popleft()

    def view(self, tenant: str) -> dict[str, Any]:
        """`GET /v1/traffic` for one tenant: rows per (function, region) and per function over
        every region, function names without the tenant prefix, sorted."""
        now = self.now()
        self._prune(now)
        prefix = f"{tenant}/"
        by_region: dict[tuple[str, str], list[tuple[str, float, Buckets]]] = {}
        for (_, function, version), track in self._tracks.items():
            if not function.startswith(prefix) or not track.deltas:
                continue
            covered_s = min(self.window_s, now - track.since_unix)
            if covered_s <= 0:
                continue
            counts = merge(d for _, d in track.deltas)
            name = function[len(prefix):]
            by_region.setdefault((name, track.region), []).append(
                (version, sum(counts) / covered_s, counts)
            )
        by_function: dict[str, list[tuple[str, float, Buckets]]] = {}
        for (name, _), parts in by_region.items():
            by_function.setdefault(name, []).extend(parts)
        return {
            "now_unix": now,
            "window_s": self.window_s,
            "regions": [
                {"function": name, "region": region, **_summary(parts)}
                for (name, region), parts in sorted(by_region.items())
            ],
            "functions": [
                {"function": name, **_summary(parts)} for name, parts in sorted(by_function.items())
            ],
        }


def _summary(parts: list[tuple[str, float, Buckets]]) -> dict[str, Any]:
    counts = merge(c for _, _, c in parts)
    versions: dict[str, float] = {}
    for version, rate, _ in parts:
        versions[version] = versions.get(version, 0.0) + rate
    p50, p99 = quantile(0.5, counts), quantile(0.99, counts)
    return {
        "requests": sum(counts),
        "requests_per_s": round(sum(versions.values()), 3),
        "p50_ms": None if p50 is None else round(p50 * 1000, 3),
        "p99_ms": None if p99 is None else round(p99 * 1000, 3),
        "versions": {v: round(r, 3) for v, r in sorted(versions.items())},
    }
