"""Prometheus metrics of the DNS server: counted per query as one list increment, labelled only
when scraped, and served by a small HTTP listener (`[dns] metrics_listen` or `edge dns
--metrics-listen HOST:PORT`; off by default, so a DNS server never opens a port it was not
told to).

Per query the Authority bumps `counts[outcome]`, where an outcome (query type, rcode, steered
region, transport) is interned to an index once, and a wire-cache hit carries the index of the
answer it repeats, so a cached answer costs one increment and no parsing. Labels are bounded:
query types outside a short list are `other`, rcodes are the few we send, regions come from
traffic.toml, nodes from traffic.toml. No client addresses or names.

Metrics: `edge_dns_queries_total{qtype, rcode, transport}`, `edge_dns_answers_total{region}`
(answers steered to a region), `edge_dns_dropped_total` (packets answered with silence: too
short, or responses), `edge_dns_health_changes_total{node, region, to}`, `edge_dns_node_up{node,
region}` (1 while served), `edge_dns_region_share{region}` (drain share now).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

import dns.rcode
import dns.rdatatype
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge.traffic.state import TrafficState

QTYPES = frozenset(
    dns.rdatatype.from_text(t)
    for t in ("A", "AAAA", "ANY", "NS", "SOA", "CNAME", "MX", "TXT", "PTR", "SRV", "CAA",
              "HTTPS", "SVCB", "DS", "DNSKEY", "AXFR", "IXFR")
)  # fmt: skip
Outcome = tuple[str, str, str, str]  # (qtype, rcode, region or "", transport)


class DnsStats:
    """Query outcomes as plain integers; the event loop (or one worker) is the only writer."""

    def __init__(self) -> None:
        self.counts: list[int] = []
        self.dropped = 0
        self._outcomes: list[Outcome] = []
        self._ids: dict[Outcome, int] = {}

    def outcome(
        self,
        qtype: dns.rdatatype.RdataType | None,
        rcode: dns.rcode.Rcode,
        region: str | None,
        transport: str,
    ) -> int:
        """The index to count an answer of this kind under (interned on first use)."""
        key = (_qtype_label(qtype), dns.rcode.to_text(rcode), region or "", transport)
        index = self._ids.get(key)
        if index is None:
            index = self._ids[key] = len(self._outcomes)
            self._outcomes.append(key)
            self.counts.append(0)
        return index

    def totals(self) -> list[tuple[Outcome, int]]:
        # Copies first: the loop may append an outcome while a scrape reads (another thread).
        outcomes, counts = list(self._outcomes), list(self.counts)
        return list(zip(outcomes, counts, strict=False))


def _qtype_label(qtype: dns.rdatatype.RdataType | None) -> str:
    if qtype is None:
        return "none"  # no question we could read
    return dns.rdatatype.to_text(qtype) if qtype in QTYPES else "other"


class DnsCollector(Collector):
    def __init__(
        self, stats: DnsStats, state: TrafficState, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stats = stats
        self.state = state
        self.clock = clock  # the DNS server's clock, which drains run on

    def collect(self) -> Iterator[Metric]:
        queries: dict[tuple[str, str, str], int] = {}
        answers: dict[str, int] = {r.name: 0 for r in self.state.config.regions}
        for (qtype, rcode, region, transport), count in self.stats.totals():
            key = (qtype, rcode, transport)
            queries[key] = queries.get(key, 0) + count
            if region:
                answers[region] = answers.get(region, 0) + count
        q = CounterMetricFamily(
            "edge_dns_queries", "Queries answered, by type, rcode and transport",
            labels=["qtype", "rcode", "transport"],
        )  # fmt: skip
        for labels, count in sorted(queries.items()):
            q.add_metric(list(labels), count)
        yield q
        a = CounterMetricFamily(
            "edge_dns_answers", "Answers steered to a region", labels=["region"]
        )
        for region, count in sorted(answers.items()):
            a.add_metric([region], count)
        yield a
        yield CounterMetricFamily(
            "edge_dns_dropped", "Packets not answered (too short, or not a query)",
            value=self.stats.dropped,
        )  # fmt: skip
        changes = CounterMetricFamily(
            "edge_dns_health_changes", "Node health state changes, by the state entered",
            labels=["node", "region", "to"],
        )  # fmt: skip
        up = GaugeMetricFamily(
            "edge_dns_node_up", "1 while the node is served (up, or not checked yet)",
            labels=["node", "region"],
        )  # fmt: skip
        for node in self.state.config.nodes:
            health = self.state.health[node.name]
            # Copies: the scrape runs on the listener's thread while the loop may write.
            for to, count in sorted((s.value, n) for s, n in dict(health.changes).items()):
                changes.add_metric([node.name, node.region, to], count)
            up.add_metric([node.name, node.region], int(health.serving))
        yield changes
        yield up
        share = GaugeMetricFamily(
            "edge_dns_region_share", "Share of its clients a region keeps (drains)",
            labels=["region"],
        )  # fmt: skip
        now = self.clock()
        for name, drain in sorted(dict(self.state.drains).items()):
            share.add_metric([name], drain.share(now))
        yield share


def serve_metrics(listen: str, collector: Collector) -> WSGIServer:
    """Starts the /metrics listener at HOST:PORT: prometheus_client's small HTTP server on a
    daemon thread, so a scrape never waits for the event loop and queries never wait for a
    scrape (beyond the GIL). Raises OSError when it cannot bind. Stop it with `shutdown()`
    then `server_close()`."""
    registry = CollectorRegistry()
    registry.register(collector)
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), host.strip("[]"), registry)
    return server
