"""`edge dns --metrics-listen`: queries by type, rcode and transport, answers by region, health
changes, scraped over HTTP after real queries with dnspython; labels stay bounded."""

from __future__ import annotations

import http.server
import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from typer.testing import CliRunner

from edge.errors import ConfigError
from edge.traffic.metrics import DROPPED, DnsStats
from edge.traffic.regions import load_traffic_config

from ..metrics_text import Sample, Scrape, delta
from .conftest import BASE_TOML, CITY_TEST_DB, MakeConfig, MakeStack
from .test_main import (
    EXAMPLE,
    TIMEOUT_S,
    DnsProcess,
    Healthz,
    _cli,
    example_config,
    free_port,
    until,
)

LONDON, SEATTLE = "81.2.69.142", "216.160.83.56"
DOWN_NODE = "ap-south-1"  # no health server: its first check takes it down


@pytest.fixture
def dns_with_metrics(tmp_path: Path) -> Iterator[tuple[DnsProcess, str]]:
    """The example zone with every node healthy but ap-south-1, and metrics on a free port."""
    health_port = free_port("127.0.0.1")
    servers = []
    for node in load_traffic_config(EXAMPLE).nodes:
        if node.name != DOWN_NODE:
            server = http.server.ThreadingHTTPServer((str(node.ipv4), health_port), Healthz)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
    listen = f"127.0.0.1:{free_port('127.0.0.1')}"
    config = example_config(tmp_path / "traffic.toml", health_port)
    proc = DnsProcess(config, CITY_TEST_DB, ["--metrics-listen", listen])
    try:
        # Said before the ready line, which the constructor waited for.
        assert f"edge dns: metrics at http://{listen}/metrics" in proc.seen
        yield proc, f"http://{listen}"
    finally:
        proc.stop()
        for server in servers:
            server.shutdown()
            server.server_close()


def query(
    proc: DnsProcess, name: str, rdtype: str | int = "A", ecs: str = LONDON, tcp: bool = False
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=0, options=[dns.edns.ECSOption(ecs, 32)])
    send = dns.query.tcp if tcp else dns.query.udp
    return send(q, "127.0.0.1", port=proc.port, timeout=TIMEOUT_S)


def raw_udp(proc: DnsProcess, data: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(data, ("127.0.0.1", proc.port))


def test_queries_answers_and_health_changes_are_counted(
    dns_with_metrics: tuple[DnsProcess, str],
) -> None:
    proc, url = dns_with_metrics
    changes = "edge_dns_health_changes_total"
    nodes = [n.name for n in load_traffic_config(EXAMPLE).nodes]
    # Every node's first check is in: each changed state (unknown -> up or down) at least once
    # (more if a slow probe on this busy machine made one flap).
    assert until(lambda: all(Scrape.of(url).value(changes, node=n) >= 1 for n in nodes))
    before = Scrape.of(url)
    # Never answering, it went down once and stays down.
    assert before.value(changes, node=DOWN_NODE, region="ap-south", to="down") == 1
    assert before.value(changes, node=DOWN_NODE, to="up") == 0
    assert before.value(changes, node="eu-west-1", region="eu-west", to="up") >= 1
    assert before.value("edge_dns_node_up", node=DOWN_NODE) == 0
    assert before.value("edge_dns_region_share", region="eu-west") == 1

    for _ in range(3):  # the first is answered, the next two from the wire cache
        assert query(proc, "www.edge.test.").rcode() == dns.rcode.NOERROR
    for _ in range(2):
        assert query(proc, "www.edge.test.", ecs=SEATTLE, tcp=True).answer
    assert not query(proc, "www.edge.test.", "AAAA").answer  # no IPv6 nodes: NODATA
    assert query(proc, "nope.edge.test.").rcode() == dns.rcode.NXDOMAIN
    assert query(proc, "example.com.").rcode() == dns.rcode.REFUSED
    assert query(proc, "www.edge.test.", 65400).rcode() == dns.rcode.NOERROR  # an unlisted type
    raw_udp(proc, b"\x12\x34\x00")  # too short to answer
    raw_udp(proc, query(proc, "edge.test.", "SOA").to_wire())  # a response: never answered
    # A header promising a question that is not there: FORMERR, and no question to label.
    garbage = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT_S)
        s.sendto(garbage, ("127.0.0.1", proc.port))
        reply, _ = s.recvfrom(512)
    assert reply[3] & 0xF == dns.rcode.FORMERR
    assert until(lambda: delta(before, Scrape.of(url), "edge_dns_dropped_total") == 2)
    after = Scrape.of(url)

    q = "edge_dns_queries_total"
    assert delta(before, after, q, qtype="A", rcode="NOERROR", transport="udp") == 3
    assert delta(before, after, q, qtype="A", rcode="NOERROR", transport="tcp") == 2
    assert delta(before, after, q, qtype="AAAA", rcode="NOERROR") == 1
    assert delta(before, after, q, qtype="A", rcode="NXDOMAIN") == 1
    assert delta(before, after, q, qtype="A", rcode="REFUSED") == 1
    assert delta(before, after, q, qtype="other", rcode="NOERROR") == 1
    assert delta(before, after, q, qtype="SOA", rcode="NOERROR") == 1
    assert delta(before, after, q, qtype="none", rcode="FORMERR") == 1
    assert delta(before, after, q) == 11
    assert delta(before, after, "edge_dns_answers_total", region="eu-west") == 3
    assert delta(before, after, "edge_dns_answers_total", region="us-east") == 2
    assert delta(before, after, "edge_dns_answers_total") == 5


def test_labels_stay_bounded(dns_with_metrics: tuple[DnsProcess, str]) -> None:
    proc, url = dns_with_metrics
    rng = random.Random(5)

    def burst(n: int) -> None:
        for _ in range(n):
            ecs = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.1"
            query(proc, f"x{rng.randrange(10**9)}.edge.test.", ecs=ecs)  # NXDOMAIN
            query(proc, "www.edge.test.", rng.choice([65280 + rng.randrange(200), 99]), ecs=ecs)

    changes = "edge_dns_health_changes_total"
    nodes = {n.name for n in load_traffic_config(EXAMPLE).nodes}
    # Health series appear when a node's first check lands (and again if a slow probe on a busy
    # machine flaps it), independently of queries: wait for every node's first check, and hold
    # them to the configured nodes rather than to the first scrape.
    assert until(lambda: all(Scrape.of(url).value(changes, node=n) >= 1 for n in nodes))
    burst(5)
    first = Scrape.of(url)
    burst(100)
    second = Scrape.of(url)
    assert delta(first, second, "edge_dns_queries_total") == 200

    def by_queries(scrape: Scrape) -> set[Sample]:
        return {s for s in scrape.series() if not s[0].startswith("edge_dns_health_changes")}

    assert by_queries(second) == by_queries(first)
    health = {dict(ls)["node"] for name, ls in second.series() if name == changes}
    assert health == nodes
    assert "x" not in {v[:1] for _, ls in second.series() for k, v in ls if k != "le"}


def test_metrics_listen_is_off_by_default_and_checked(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    assert make_config().dns.metrics_listen == ""
    on = make_config(base=_with_dns_key('metrics_listen = "[::1]:9153"'))
    assert on.dns.metrics_listen == "[::1]:9153"
    for bad in ("9153", "localhost:", "127.0.0.1:99999", "::1:9153"):
        with pytest.raises(ConfigError, match=r"dns\.metrics_listen"):
            make_config(base=_with_dns_key(f'metrics_listen = "{bad}"'))
    config = example_config(tmp_path / "traffic.toml", free_port("127.0.0.1"))
    result = CliRunner().invoke(
        _cli(), ["--config", str(config), "--port", "0", "--metrics-listen", "nowhere"]
    )
    assert result.exit_code == 1 and "--metrics-listen must be HOST:PORT" in result.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        result = CliRunner().invoke(
            _cli(),
            ["--config", str(config), "--port", "0", "--geoip-db", str(CITY_TEST_DB),
             "--metrics-listen", busy],
        )  # fmt: skip
    assert result.exit_code == 1
    assert f"error: cannot listen for metrics on {busy}" in result.output


def test_an_answer_served_from_the_wire_cache_counts_like_the_first(
    make_stack: MakeStack,
) -> None:
    stack = make_stack()
    ecs = dns.edns.ECSOption(LONDON, 32)
    wire = dns.message.make_query("www.edge.test.", "A", use_edns=0, options=[ecs]).to_wire()
    for _ in range(4):
        assert stack.authority.handle(wire, "192.0.2.1", "udp", 0.0) is not None
    outcomes = dict(stack.authority.stats.totals())
    assert outcomes == {("A", "NOERROR", "eu-west", "udp"): 4}


def _with_dns_key(line: str) -> str:
    return BASE_TOML.replace("ttl_s = 30\n", f"ttl_s = 30\n{line}\n", 1)


def test_each_thread_counts_in_its_own_tally_and_shipments_add_up() -> None:
    worker, parent = DnsStats(), DnsStats()
    first = worker.tally()
    a = worker.outcome(dns.rdatatype.A, dns.rcode.NOERROR, "eu-west", "udp")
    second = worker.tally()
    first[a] += 2
    second[a] += 1
    # Interned after both tallies exist: every tally grows a slot before the index is out.
    nx = worker.outcome(dns.rdatatype.AAAA, dns.rcode.NXDOMAIN, None, "udp")
    second[nx] += 1
    first[DROPPED] += 1
    parent.add(worker.since())
    assert worker.since() == []  # shipped once only
    first[a] += 1
    parent.add(worker.since())
    local = parent.outcome(dns.rdatatype.A, dns.rcode.NOERROR, "eu-west", "udp")
    parent.counts[local] += 10  # the parent's own answers
    expected = {("A", "NOERROR", "eu-west", "udp"): 14, ("AAAA", "NXDOMAIN", "", "udp"): 1}
    assert dict(parent.totals()) == expected
    assert parent.dropped() == 1 and worker.dropped() == 1


def test_every_worker_process_is_counted(tmp_path: Path) -> None:
    """`--workers 2`: the parent and one worker process, two UDP sockets each; queries from
    many source ports land on all four, and the parent's /metrics counts every answer."""
    listen = f"127.0.0.1:{free_port('127.0.0.1')}"
    config = example_config(tmp_path / "traffic.toml", free_port("127.0.0.1"))
    proc = DnsProcess(config, CITY_TEST_DB, ["--workers", "2", "--metrics-listen", listen])
    url, total = f"http://{listen}", 120
    try:
        assert any("answering UDP with 2 workers of 2 threads" in line for line in proc.seen)
        before = Scrape.of(url)
        for i in range(total):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a new source port
                s.settimeout(TIMEOUT_S)
                s.sendto(dns.message.make_query(f"h{i % 7}.edge.test.", "A").to_wire(),
                         ("127.0.0.1", proc.port))  # fmt: skip
                assert dns.message.from_wire(s.recv(512)).rcode() == dns.rcode.NXDOMAIN
        q = "edge_dns_queries_total"
        assert until(lambda: delta(before, Scrape.of(url), q) == total)
        after = Scrape.of(url)
        assert delta(before, after, q, qtype="A", rcode="NXDOMAIN", transport="udp") == total
    finally:
        proc.stop()
