"""What a node tells the control plane about its traffic (`POST /v1/node/traffic`, for the live
view `GET /v1/traffic`): per (function, version), a latency histogram of every request since the
node started, read from `/metrics`' `edge_function_duration_seconds`. The request path keeps
one histogram; this reads its cumulative `le` counts when a report is due.

Counters since start rather than since the last report: a report that is lost or sent twice
costs nothing, because the control plane takes differences between the reports it receives. The
bounds are `/metrics`' fixed ones, so histograms from any node merge by adding bucket counts.
A version no longer served leaves the report with its series (`NodeMetrics.retain`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from edge.node.metrics import LATENCY_BUCKETS_S, NodeMetrics

# One count per bound (latency <= bound, like Prometheus' `le`) and one for anything slower.
BUCKET_COUNT = len(LATENCY_BUCKETS_S) + 1


def bucket_counts(cumulative: Sequence[float]) -> list[int]:
    """Prometheus' cumulative counts (one per bound, then +Inf) as one count per bucket."""
    if len(cumulative) != BUCKET_COUNT:
        raise ValueError(f"expected {BUCKET_COUNT} cumulative counts, got {len(cumulative)}")
    counts = [int(c) for c in cumulative]
    return [counts[0]] + [b - a for a, b in itertools.pairwise(counts)]


def traffic_series(metrics: NodeMetrics) -> list[dict[str, Any]]:
    """The `series` of a traffic report: one entry per (function, version) served now that
    has counted a request."""
    out = []
    for (function, version), since_unix, cumulative in metrics.latency_counts():
        if cumulative[-1]:
            out.append({"function": function, "version": version, "since_unix": since_unix,
                        "buckets": bucket_counts(cumulative)})  # fmt: skip
    return out
