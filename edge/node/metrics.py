"""Prometheus metrics of a node, on `/metrics`. One registry per runtime, not the global one,
so several nodes in one process (tests, benchmarks) keep their own counts.

Labels stay bounded: function names and versions come from deployments, status is a class
(2xx...), reasons are the platform's own error codes; never paths or client addresses.

The per-request counts are plain integers, added on the event loop's thread (where every
request is routed and answered) and moved into the Prometheus metrics when someone reads them
(`flush`, from `/metrics` and the follower's reports, on the same thread): a Prometheus
counter takes a lock per increment, and a request makes seven of them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# 50 µs to 10 s, roughly x2 apart: fine enough to read p50/p99 of a C hello and of a slow call.
LATENCY_BUCKETS_S = (
    0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
    1.0, 2.0, 5.0, 10.0,
)  # fmt: skip


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "edge_function_requests", "Function requests by outcome",
            ["function", "version", "status_class"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "edge_function_duration_seconds", "Time from routing to the function's answer",
            ["function"], buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "edge_function_errors", "Platform errors about a function (trap, deadline, ...)",
            ["function", "reason"], registry=r,
        )  # fmt: skip
        self.bytes_in = Counter(
            "edge_function_request_bytes", "Request body bytes", ["function"], registry=r
        )
        self.bytes_out = Counter(
            "edge_function_response_bytes", "Response body bytes", ["function"], registry=r
        )
        self.in_flight = Gauge("edge_node_in_flight_requests", "Requests being served", registry=r)
        self.revision = Gauge(
            "edge_node_applied_revision", "Control plane revision applied", registry=r
        )
        self.spills = Counter(
            "edge_node_spills", "Requests forwarded to another region", ["to_region"], registry=r
        )
        self.cache = Gauge(
            "edge_node_compile_cache", "Compile cache lookups since start", ["result"], registry=r
        )
        self._functions: dict[tuple[str, str], FunctionMetrics] = {}
        self.in_flight_now = 0

    def function(self, name: str, version: str) -> FunctionMetrics:
        """The children of one function version, looked up once: `labels()` costs more than
        the count it feeds (it locks and hashes per call)."""
        found = self._functions.get((name, version))
        if found is None:
            found = self._functions[(name, version)] = FunctionMetrics(self, name, version)
        return found

    def flush(self) -> None:
        self.in_flight.set(self.in_flight_now)
        for function in list(self._functions.values()):
            function.flush()

    def requests_total(self) -> int:
        """Function requests served since start (all labels): nodes report it, and the control
        plane turns two reports into requests per second."""
        self.flush()
        return int(
            sum(
                sample.value
                for metric in self.requests.collect()
                for sample in metric.samples
                if sample.name.endswith("_total")
            )
        )

    def exposition(self) -> bytes:
        self.flush()
        return generate_latest(self.registry)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class FunctionMetrics:
    """The labelled metrics of one function version, with counts not yet flushed."""

    def __init__(self, metrics: NodeMetrics, name: str, version: str) -> None:
        self.metrics = metrics
        self.name = name
        self.version = version
        self.latency = metrics.latency.labels(name)
        self._bytes_in_child = metrics.bytes_in.labels(name)
        self._bytes_out_child = metrics.bytes_out.labels(name)
        self.bytes_in = 0
        self.bytes_out = 0
        self.by_status: dict[int, int] = {}

    def request(self, status: int, bytes_in: int, bytes_out: int) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out

    def error(self, reason: str) -> None:
        self.metrics.errors.labels(self.name, reason).inc()

    def flush(self) -> None:
        by_status, self.by_status = self.by_status, {}
        bytes_in, self.bytes_in = self.bytes_in, 0
        bytes_out, self.bytes_out = self.bytes_out, 0
        for status, count in by_status.items():
            self.metrics.requests.labels(self.name, self.version, status_class(status)).inc(count)
        if bytes_in:
            self._bytes_in_child.inc(bytes_in)
        if bytes_out:
            self._bytes_out_child.inc(bytes_out)
