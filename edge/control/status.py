"""What `GET /v1/status` says about nodes and regions, computed from rows and a clock (pure)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from edge.control.health import UNCHECKED
from edge.control.records import Node

# The follower's words for a snapshot it would not apply (edge.node.follower.poll_once).
_REFUSED = re.compile(r"^refused revision (\d+):")


def refused_revision(last_error: str) -> int | None:
    """The revision a node's `last_error` says it refused, None if it refused none."""
    m = _REFUSED.match(last_error)
    return int(m.group(1)) if m else None


def node_json(node: Node, revision: int, now_unix: float, stale_after_s: float) -> dict[str, Any]:
    seen_ago_s = max(0.0, now_unix - node.last_report_unix)
    return {
        "id": node.id,
        "region": node.region,
        "applied_revision": node.applied_revision,
        "current": node.applied_revision >= revision,
        "healthy": node.healthy,
        "last_seen_unix": node.last_report_unix,
        "last_seen_s_ago": round(seen_ago_s, 3),
        # A node that stopped reporting is listed but not waited for: it may be gone for good.
        "stale": seen_ago_s > stale_after_s,
        "convergence_ms": node.convergence_ms,
        "last_error": node.last_error,
    }


def status_json(
    revision: int, nodes: Sequence[Node], now_unix: float, stale_after_s: float,
    checks: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """`checks`: the control plane's active checks by node id (`CheckTable.views`)."""
    checks = checks or {}
    rows = [{**node_json(n, revision, now_unix, stale_after_s), **checks.get(n.id, UNCHECKED)}
            for n in nodes]
    regions: dict[str, dict[str, Any]] = {}
    for row in rows:
        r = regions.setdefault(
            row["region"],
            {"nodes": 0, "healthy": 0, "current": 0, "stale": 0, "check_up": 0, "check_down": 0,
             "min_applied_revision": row["applied_revision"], "max_convergence_ms": None,
             "last_seen_unix": row["last_seen_unix"]},
        )
        r["nodes"] += 1
        r["healthy"] += int(row["healthy"])
        r["current"] += int(row["current"])
        r["stale"] += int(row["stale"])
        r["check_up"] += int(row["check"] == "up")
        r["check_down"] += int(row["check"] == "down")
        r["min_applied_revision"] = min(r["min_applied_revision"], row["applied_revision"])
        r["last_seen_unix"] = max(r["last_seen_unix"], row["last_seen_unix"])
        if row["convergence_ms"] is not None:
            r["max_convergence_ms"] = max(r["max_convergence_ms"] or 0.0, row["convergence_ms"])
    return {"revision": revision, "now_unix": now_unix, "nodes": rows, "regions": regions}
