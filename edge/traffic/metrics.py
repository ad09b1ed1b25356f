"""Prometheus metrics of the DNS server: counted per query as one list increment, labelled only
when scraped, and served by a small HTTP listener (`[dns] metrics_listen` or `edge dns
--metrics-listen HOST:PORT`; off by default, so a DNS server never opens a port it was not
told to).

Per query the Authority bumps `counts[outcome]` in the tally of the thread answering (each UDP
thread has its own, the event loop another, so no increment races another writer), where an
outcome (query type, rcode, steered region, transport) is interned to an index once per
process, and a wire-cache hit carries the index of the answer it repeats, so a cached answer
costs one increment and no parsing. UDP worker processes count in their own DnsStats and ship
what they counted since the last time to the parent (`since` there, `add` here), every second
and on every scrape (edge/traffic/workers.py), so the parent's /metrics counts every process.
Labels are bounded:
query types outside a short list are `other`, rcodes are the few we send, regions come from
traffic.toml, nodes from traffic.toml. No client addresses or names.

Metrics: `edge_dns_queries_total{qtype, rcode, transport}`, `edge_dns_answers_total{region}`
(answers steered to a region), `edge_dns_dropped_total` (packets answered with silence: too
short, or responses), `edge_dns_health_changes_total{node, region, to}`, `edge_dns_node_up{node,
region}` (1 while served), `edge_dns_region_share{region}` (drain share now),
`edge_dns_config_reloads_total{result="ok"|"failed"}` (traffic.toml re-read on SIGHUP).
"""

from __future__ import annotations

import threading
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


# Tally slot 0: packets answered with silence (too short, or not a query).
DROPPED = 0
_DROPPED_KEY: Outcome = ("", "", "", "")
Shipment = list[tuple[Outcome, int]]  # counts by outcome, from a worker process


class DnsStats:
    """Query outcomes as plain integers, in one tally (list) per writing thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # interning, tallies joining, shipments
        self._outcomes: list[Outcome] = [_DROPPED_KEY]
        self._ids: dict[Outcome, int] = {}
        self._tallies: list[list[int]] = []
        self._shipped: dict[Outcome, int] = {}  # from worker processes
        self._sent: list[int] = []  # this process's totals at the last `since`
        self.counts = self.tally()  # the event loop's (TCP)

    def tally(self) -> list[int]:
        """A new tally for one thread to count into: only that thread may write it."""
        with self._lock:
            counts = [0] * len(self._outcomes)
            self._tallies.append(counts)
        return counts

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
            with self._lock:
                index = self._ids.get(key)
                if index is None:
                    index = len(self._outcomes)
                    self._outcomes.append(key)
                    for counts in self._tallies:
                        counts.append(0)
                    # Published last: any thread that sees the index finds its slot.
                    self._ids[key] = index
        return index

    def _local(self) -> tuple[list[Outcome], list[int]]:
        """This process's outcomes and their totals over every tally."""
        with self._lock:
            outcomes = list(self._outcomes)
            tallies = [list(t) for t in self._tallies]
        return outcomes, [sum(t[i] for t in tallies) for i in range(len(outcomes))]

    def totals(self) -> list[tuple[Outcome, int]]:
        """Answered queries by outcome: this process's and those shipped by workers."""
        outcomes, totals = self._local()
        merged = dict(zip(outcomes[1:], totals[1:], strict=True))
        with self._lock:
            shipped = dict(self._shipped)
        shipped.pop(_DROPPED_KEY, None)
        for key, count in shipped.items():
            merged[key] = merged.get(key, 0) + count
        return list(merged.items())

    def dropped(self) -> int:
        _, totals = self._local()
        with self._lock:
            return totals[DROPPED] + self._shipped.get(_DROPPED_KEY, 0)

    def since(self) -> Shipment:
        """What this process counted since the last call (a worker's shipment); one caller."""
        outcomes, totals = self._local()
        sent = self._sent + [0] * (len(totals) - len(self._sent))
        self._sent = totals
        return [(o, n - s) for o, n, s in zip(outcomes, totals, sent, strict=True) if n > s]

    def add(self, shipment: Shipment) -> None:
        """Counts shipped by a worker process."""
        with self._lock:
            for key, count in shipment:
                self._shipped[key] = self._shipped.get(key, 0) + count


class ReloadStats:
    """traffic.toml reloads by result; written on the event loop, read by the scrape."""

    RESULTS = ("ok", "failed")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.RESULTS, 0)

    def count(self, result: str) -> None:
        self.counts = {**self.counts, result: self.counts[result] + 1}  # whole: scrape thread


def _qtype_label(qtype: dns.rdatatype.RdataType | None) -> str:
    if qtype is None:
        return "none"  # no question we could read
    return dns.rdatatype.to_text(qtype) if qtype in QTYPES else "other"


class DnsCollector(Collector):
    def __init__(
        self,
        stats: DnsStats,
        state: TrafficState,
        refresh: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        reloads: ReloadStats | None = None,
    ) -> None:
        self.stats = stats
        self.reloads = reloads or ReloadStats()
        self.state = state
        self.refresh = refresh  # brings in the workers' counts before a scrape reads them
        self.clock = clock  # the DNS server's clock, which drains run on

    def collect(self) -> Iterator[Metric]:
        if self.refresh is not None:
            self.refresh()
        queries: dict[tuple[str, str, str], int] = {}
        answers: dict[str, int] = {r.name: 0 for r in self.state.regions}
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
            value=self.stats.dropped(),
        )  # fmt: skip
        changes = CounterMetricFamily(
            "edge_dns_health_changes", "Node health state changes, by the state entered",
            labels=["node", "region", "to"],
        )  # fmt: skip
        up = GaugeMetricFamily(
            "edge_dns_node_up", "1 while the node is served (up, or not checked yet)",
            labels=["node", "region"],
        )  # fmt: skip
        healths = self.state.health
        for node in self.state.nodes:
            health = healths.get(node.name)
            if health is None:  # removed from the region map while we read
                continue
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
        reloads = CounterMetricFamily(
            "edge_dns_config_reloads", "traffic.toml reloads (SIGHUP), by result",
            labels=["result"],
        )  # fmt: skip
        for result, count in self.reloads.counts.items():
            reloads.add_metric([result], count)
        yield reloads


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
