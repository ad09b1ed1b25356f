"""A node's `/metrics` after real traffic: per-function counters and histograms move by what was
sent, the sandbox's kills are told apart, and labels stay bounded whatever clients send."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from edge.errors import DeadlineExceeded, FunctionTrapped, MemoryLimitExceeded
from edge.node.metrics import NodeMetrics

from .conftest import EXAMPLES, FIXTURES, Proc
from .metrics_text import Scrape, delta

HELLO = "Hello from C!\n"
KILLERS = ["trap", "loop", "membomb", "bigmemory"]


@pytest.fixture(scope="module")
def node(start_module_node: Callable[..., Proc], built: Callable[[Path], Path]) -> Proc:
    projects = [EXAMPLES / "c" / "hello"] + [FIXTURES / "functions" / n for n in KILLERS]
    for p in projects:
        built(p)
    body = "".join(f'[[function]]\nproject = "{p}"\n' for p in projects)
    body += '[[route]]\nroute = "*/"\nfunction = "hello-c"\n'
    body += "".join(f'[[route]]\nroute = "*/k/{n}"\nfunction = "{n}"\n' for n in KILLERS)
    node = 'id = "metrics-node"\nregion = "eu-west"\ntrusted_proxies = ["127.0.0.1/32"]\n'
    return start_module_node(body, node=node)


def test_requests_bytes_latency_and_instantiations_move_with_traffic(node: Proc) -> None:
    before = Scrape.of(node.url)
    for _ in range(5):
        r = httpx.post(node.url + "/", content=b"0123456789")
        assert r.status_code == 200 and r.text == HELLO
    after = Scrape.of(node.url)
    hello = {"function": "hello-c", "version": ""}  # node.toml functions have no version

    def moved(name: str, **labels: str) -> float:
        return delta(before, after, name, **hello, **labels)

    assert moved("edge_function_requests_total", status_class="2xx") == 5
    assert moved("edge_function_duration_seconds_count") == 5
    # A fresh instance per request (the default policy): one instantiation each.
    assert moved("edge_function_instantiate_seconds_count") == 5
    assert 0 < moved("edge_function_instantiate_seconds_sum") < 5 * 0.1
    assert moved("edge_function_request_bytes_total") == 50
    assert moved("edge_function_response_bytes_total") == 5 * len(HELLO)
    # The fine buckets resolve a C instantiation: most of them land under 1 ms.
    assert moved("edge_function_instantiate_seconds_bucket", le="0.001") >= 3
    assert after.value("edge_node_info", node="metrics-node", region="eu-west") == 1
    assert after.value("edge_node_in_flight_requests") == 0
    lookups = after.value("edge_node_compile_cache_lookups_total")
    assert lookups >= 1 + len(KILLERS)  # every function was looked up once when loaded


@pytest.mark.parametrize(
    ("name", "status", "counter"),
    [
        ("trap", 500, "edge_function_traps_total"),
        ("loop", 504, "edge_function_deadline_overruns_total"),
        # Over the limit while instantiating, and growth refused while running.
        ("bigmemory", 500, "edge_function_memory_limit_kills_total"),
        ("membomb", 500, "edge_function_memory_limit_kills_total"),
    ],
)
def test_each_kill_has_its_own_counter(node: Proc, name: str, status: int, counter: str) -> None:
    kills = [
        "edge_function_traps_total",
        "edge_function_deadline_overruns_total",
        "edge_function_memory_limit_kills_total",
    ]
    labels = {"function": name, "version": ""}
    before = Scrape.of(node.url)
    r = httpx.get(node.url + f"/k/{name}", timeout=30)
    assert r.status_code == status, r.text
    after = Scrape.of(node.url)
    for k in kills:
        assert delta(before, after, k, **labels) == (1 if k == counter else 0), k
    reason = r.json()["error"]
    if counter == "edge_function_memory_limit_kills_total":
        assert reason == "memory_limit" and "memory limit of 32 MiB" in r.json()["message"]
    assert delta(before, after, "edge_function_errors_total", reason=reason, **labels) == 1
    assert delta(before, after, "edge_function_requests_total", status_class="5xx", **labels) == 1
    assert delta(before, after, "edge_function_duration_seconds_count", **labels) == 1
    instantiated = delta(before, after, "edge_function_instantiate_seconds_count", **labels)
    if name == "bigmemory":
        assert instantiated == 0  # refused while instantiating: no instance was made
    else:
        # The loop ran inline first, over its short budget, then again on a thread: both count.
        assert instantiated >= 1
    # The node's other functions keep answering.
    assert httpx.get(node.url + "/").text == HELLO


def test_labels_stay_bounded_whatever_clients_send(node: Proc) -> None:
    def burst(n: int, tag: str) -> None:
        with httpx.Client(base_url=node.url) as client:
            for i in range(n):
                ip = f"203.0.{i % 250}.{i // 250 + 1}"
                headers = {"x-forwarded-for": ip, "x-request-id": f"{tag}-req-{i}"}
                assert client.get(f"/{tag}/path-{i}?q={i}", headers=headers).status_code == 200
                client.get(f"/k/trap/{tag}-{i}", headers=headers)  # 500, an error series too

    burst(20, "warm")  # creates every series this traffic will ever touch
    first = Scrape.of(node.url)
    burst(200, "many")
    second = Scrape.of(node.url)
    assert second.series() == first.series(), second.series() ^ first.series()
    for text in ("many", "path-", "203.0.", "req-"):
        assert text not in second.text
    assert delta(first, second, "edge_function_requests_total", function="hello-c") == 200
    allowed = {"function", "version", "status_class", "reason", "le", "node", "region",
               "result", "to_region", "ticker", "invoke"}  # fmt: skip
    for labels in (dict(ls) for (_, ls) in second.series()):
        assert set(labels) <= allowed, labels


def test_series_of_versions_no_longer_deployed_are_dropped() -> None:
    m = NodeMetrics("n", "r")
    v1, v2 = m.series("f", "1"), m.series("f", "2")
    for _ in range(3):
        v1.answered(200)
    v1.failed(DeadlineExceeded("slow"))
    v2.failed(MemoryLimitExceeded("big"))
    v2.failed(FunctionTrapped("oops"))
    assert m.requests_total() == 6
    m.retain([("f", "2")])
    text = m.exposition().decode()
    assert 'version="1"' not in text and 'version="2"' in text
    assert m.requests_total() == 6  # still a counter: nodes report it and rates use deltas
    m.series("f", "2").answered(204)
    assert m.requests_total() == 7
    assert m.series("f", "2") is m.series("f", "2")  # bound once, reused per request


def test_plain_histogram_counts_as_prometheus_client_does() -> None:
    """The node's histograms are plain numbers (edge.node.metrics.Buckets) made into metric
    families when scraped: a value on a bound, between bounds and past the last must land in
    the bucket prometheus-client's own Histogram puts it in."""
    from prometheus_client import CollectorRegistry, Histogram

    from edge.node.metrics import LATENCY_BUCKETS_S, Buckets

    values = [0.0, *LATENCY_BUCKETS_S, *(b * 1.5 for b in LATENCY_BUCKETS_S), 1e9]
    theirs = Histogram("h", "h", buckets=LATENCY_BUCKETS_S, registry=CollectorRegistry())
    ours = Buckets(LATENCY_BUCKETS_S)
    for v in values:
        theirs.observe(v)
        ours.observe(v)
    samples = [s for m in theirs.collect() for s in m.samples]
    expected = [s.value for s in samples if s.name == "h_bucket"]
    assert [float(c) for c in ours.cumulative()] == expected
    assert ours.sum == next(s.value for s in samples if s.name == "h_sum")
