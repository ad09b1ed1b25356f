"""Prometheus metrics of the control plane, on `/metrics` (no token: counts only, no tenant
data; scrape it from where the API is reachable).

- `edge_control_revision`: the current revision.
- `edge_control_convergence_seconds`: for each node and each revision it applies, the time from
  the revision's creation to the node's report that it applied it, both on this process's
  clock (nodes' clocks do not enter). A node joining, or first heard after this process
  started, is not timed for revisions made before it was known: that is catching up, not a
  push. Skipped revisions (a node going from 5 straight to 8) are timed once, for 8.
- `edge_control_nodes{region, state}`: every node by state, read from the store when scraped:
  `unreachable` (no report within the staleness window), else `refused` (it reported an error
  about the newest snapshot), else `current` or `behind`.
- `edge_control_api_requests_total{route, method, status}`: by route template (never a path).
- `edge_control_node_check_changes_total{to}`: transitions of the control plane's active
  health checks of nodes (`edge.control.health`), by the state entered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute, Match

from edge.asgi import ASGIApp, Message, Receive, Scope, Send
from edge.control.records import Node
from edge.control.status import node_json

# 10 ms to 5 min: loopback pushes take ~0.1 s, 50 nodes ~1 s, a node back from an outage minutes.
CONVERGENCE_BUCKETS_S = (
    0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
    60.0, 300.0,
)  # fmt: skip
NODE_STATES = ("current", "behind", "refused", "unreachable")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
CREATED_CACHE_ENTRIES = 1024


def node_state(node: Node, revision: int, now_unix: float, stale_after_s: float) -> str:
    """One word for what `edge status` says about the node (the same rules: `node_json`)."""
    row = node_json(node, revision, now_unix, stale_after_s)
    if row["stale"]:
        return "unreachable"
    if row["last_error"]:
        return "refused"
    return "current" if row["current"] else "behind"


class ControlMetrics:
    def __init__(
        self,
        revision: Callable[[], int],
        nodes: Callable[[], list[Node]],
        created: Callable[[int], float | None],
        stale_after_s: float,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.registry = CollectorRegistry()
        self.created = created
        self.now = now
        self.convergence = Histogram(
            "edge_control_convergence_seconds",
            "From a revision's creation to a node reporting it applied",
            buckets=CONVERGENCE_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.requests = Counter(
            "edge_control_api_requests", "API requests by route template, method and status",
            ["route", "method", "status"], registry=self.registry,
        )  # fmt: skip
        self.check_changes = Counter(
            "edge_control_node_check_changes",
            "Active health check transitions of nodes, by the state entered",
            ["to"], registry=self.registry,
        )  # fmt: skip
        self.registry.register(_StoreState(revision, nodes, stale_after_s, now))
        # Reports arrive on worker threads, several at once.
        self._lock = threading.Lock()
        self._known: dict[str, tuple[float, int]] = {}  # node -> (first heard, last revision)
        self._created: dict[int, float | None] = {}

    def node_reported(self, node_id: str, revision: int) -> float | None:
        """Records a node's report; times the revision if it is news from this node. Returns
        the convergence observed, in seconds, if any. Blocking (reads the store)."""
        now = self.now()
        with self._lock:
            first, last = self._known.get(node_id, (now, revision))
            self._known[node_id] = (first, max(last, revision))
            if revision <= last:
                return None
        created = self._created_at(revision)
        if created is None or created < first:
            return None
        elapsed = max(0.0, now - created)
        self.convergence.observe(elapsed)
        return elapsed

    def _created_at(self, revision: int) -> float | None:
        with self._lock:
            if revision in self._created:
                return self._created[revision]
        created = self.created(revision)
        with self._lock:
            if len(self._created) >= CREATED_CACHE_ENTRIES:
                self._created.clear()
            self._created[revision] = created
        return created

    def exposition(self) -> bytes:
        """Blocking (reads the store): call it from a worker thread."""
        return generate_latest(self.registry)

    def middleware(self, routes: list[BaseRoute]) -> Callable[[ASGIApp], ASGIApp]:
        """Counts every API request by the template of the route it matched."""

        def wrap(app: ASGIApp) -> ASGIApp:
            async def counted(scope: Scope, receive: Receive, send: Send) -> None:
                if scope["type"] != "http":
                    await app(scope, receive, send)
                    return
                status = 500  # what a crash before the response start turns into

                async def watch(message: Message) -> None:
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = int(message["status"])
                    await send(message)

                try:
                    await app(scope, receive, watch)
                finally:
                    method = scope["method"] if scope["method"] in METHODS else "other"
                    self.requests.labels(route_template(routes, scope), method, str(status)).inc()

            return counted

        return wrap


def route_template(routes: list[BaseRoute], scope: Scope) -> str:
    """The path template a request matched ("/v1/functions/{name}/deploy"), "unmatched" if
    none: a bounded label, whatever the path."""
    for route in routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return str(getattr(route, "path", "unmatched"))
    return "unmatched"


class _StoreState(Collector):
    """The revision and node states, read from the store when scraped."""

    def __init__(
        self,
        revision: Callable[[], int],
        nodes: Callable[[], list[Node]],
        stale_after_s: float,
        now: Callable[[], float],
    ) -> None:
        self.revision = revision
        self.nodes = nodes
        self.stale_after_s = stale_after_s
        self.now = now

    def collect(self) -> Iterator[Metric]:
        revision = self.revision()
        yield GaugeMetricFamily("edge_control_revision", "The current revision", value=revision)
        now = self.now()
        counts: dict[tuple[str, str], int] = {}
        for n in self.nodes():
            for state in NODE_STATES:  # every state of every region, zeros included
                counts.setdefault((n.region, state), 0)
            key = (n.region, node_state(n, revision, now, self.stale_after_s))
            counts[key] += 1
        family = GaugeMetricFamily(
            "edge_control_nodes", "Nodes by region and state", labels=["region", "state"]
        )
        for (region, state), count in sorted(counts.items()):
            family.add_metric([region, state], count)
        yield family
