"""Requests and latency per (function, version) since the node started, for the control plane's
live view (`GET /v1/traffic`). Pure: the node's follower sends `report()` to the control plane.

Counters since start rather than since the last report: a report that is lost or sent twice
costs nothing, because the control plane takes differences between the reports it receives. The
latency histogram has the fixed bounds of `/metrics`, so histograms from any node merge by
adding bucket counts.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from edge.node.metrics import LATENCY_BUCKETS_S

# One count per bound (latency <= bound, like Prometheus' `le`) and one for anything slower.
BUCKET_COUNT = len(LATENCY_BUCKETS_S) + 1


def bucket_of(seconds: float) -> int:
    return bisect_left(LATENCY_BUCKETS_S, seconds)


class Tally:
    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        # Tells the control plane which life of the node these counters belong to: a restarted
        # node counts from zero again, and must not look like negative traffic.
        self.started_unix = now()
        self.observations = 0  # changes whenever anything is counted: nothing new, no report
        self._buckets: dict[tuple[str, str], list[int]] = {}
        self._since: dict[tuple[str, str], float] = {}  # when each series counted its first

    def observe(self, function: str, version: str, seconds: float) -> None:
        counts = self._buckets.get((function, version))
        if counts is None:
            counts = self._buckets[(function, version)] = [0] * BUCKET_COUNT
            self._since[(function, version)] = self.now()
        counts[bucket_of(seconds)] += 1
        self.observations += 1

    def series(self) -> list[dict[str, Any]]:
        """The `series` of a traffic report: one entry per (function, version) ever served."""
        return [
            {"function": f, "version": v, "since_unix": self._since[(f, v)],
             "buckets": list(counts)}
            for (f, v), counts in sorted(self._buckets.items())
        ]
