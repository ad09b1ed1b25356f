"""The live-traffic math (edge.control.live, edge.node.traffic_report): rates from counters,
quantiles from merged buckets, restarts, the window sliding on a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from edge.control.errors import PayloadTooLarge
from edge.control.live import (
    MAX_SERIES_PER_REPORT,
    TrafficWindow,
    merge,
    parse_report,
    quantile,
)
from edge.errors import BadRequest
from edge.node.metrics import LATENCY_BUCKETS_S, NodeMetrics
from edge.node.traffic_report import BUCKET_COUNT, bucket_counts, traffic_series

from .conftest import FakeClock


def histogram(**counts: int) -> tuple[int, ...]:
    """histogram(b3=5) -> five requests in bucket 3."""
    out = [0] * BUCKET_COUNT
    for key, n in counts.items():
        out[int(key[1:])] = n
    return tuple(out)


def report(
    node: str,
    region: str,
    series: dict[tuple[str, str], tuple[int, ...]],
    started: float = 1.0,
    since: float | None = None,
) -> dict[str, Any]:
    return {
        "node_id": node,
        "region": region,
        "started_unix": started,
        "series": [
            {"function": f, "version": v, "since_unix": started if since is None else since,
             "buckets": list(b)}
            for (f, v), b in series.items()
        ],
    }


# --- the histogram ------------------------------------------------------------------------------


def test_a_latency_on_a_bound_is_counted_in_that_bucket() -> None:
    metrics = NodeMetrics(now=FakeClock(50.0))
    latency = metrics.series("t/a", "1").latency
    for seconds in (0.0, LATENCY_BUCKETS_S[0], LATENCY_BUCKETS_S[0] * 1.01,
                    LATENCY_BUCKETS_S[-1], 60.0):  # fmt: skip
        latency.observe(seconds)
    [series] = traffic_series(metrics)
    # 60 s is slower than every bound: the overflow bucket.
    assert series["buckets"] == list(histogram(b0=2, b1=1, b16=1, b17=1))


def test_cumulative_counts_become_one_count_per_bucket() -> None:
    cumulative = [0.0] * 5 + [2.0] * 12 + [3.0]
    assert bucket_counts(cumulative) == list(histogram(b5=2, b17=1))
    with pytest.raises(ValueError, match="cumulative counts"):
        bucket_counts([1.0, 2.0])


def test_quantile_interpolates_inside_the_bucket_the_rank_falls_in() -> None:
    # 100 requests between 1 ms and 2 ms (bucket 5: (0.001, 0.002]).
    h = histogram(b5=100)
    assert LATENCY_BUCKETS_S[4:6] == (0.001, 0.002)
    assert quantile(0.5, h) == pytest.approx(0.0015)
    assert quantile(0.99, h) == pytest.approx(0.00199)
    # 99 fast ones and one slow one: p99 is still fast, p100 is slow.
    h = histogram(b0=99, b10=1)
    assert quantile(0.99, h) == pytest.approx(LATENCY_BUCKETS_S[0])
    assert quantile(1.0, h) == pytest.approx(LATENCY_BUCKETS_S[10])


def test_quantile_of_an_empty_histogram_is_none_and_overflow_answers_the_top_bound() -> None:
    assert quantile(0.99, histogram()) is None
    assert quantile(0.99, histogram(b17=3)) == LATENCY_BUCKETS_S[-1]


def test_merging_histograms_adds_bucket_counts() -> None:
    assert merge([histogram(b1=2, b3=1), histogram(b3=4)]) == histogram(b1=2, b3=5)
    assert merge([]) == histogram()


def test_reports_come_from_the_metrics_histogram_per_function_and_version() -> None:
    clock = FakeClock(50.0)
    metrics = NodeMetrics(now=clock)
    assert traffic_series(metrics) == []
    metrics.series("t/a", "1").latency.observe(0.0015)
    clock.advance(3)
    metrics.series("t/a", "1").latency.observe(0.0015)
    metrics.series("t/a", "2").latency.observe(30.0)
    metrics.series("t/b", "1")  # routed, but not answered yet: nothing to report
    assert metrics.started_unix == 50.0
    assert traffic_series(metrics) == [
        entry(function="t/a", since_unix=50.0, buckets=list(histogram(b5=2))),
        entry(function="t/a", version="2", since_unix=53.0, buckets=list(histogram(b17=1))),
    ]
    # The very counts /metrics shows: one histogram, two readers.
    text = metrics.exposition().decode()
    assert 'edge_function_duration_seconds_count{function="t/a",version="1"} 2.0' in text
    # A version the deployment no longer serves leaves the report, not only /metrics.
    metrics.retain([("t/a", "2")])
    assert traffic_series(metrics) == [
        entry(function="t/a", version="2", since_unix=53.0, buckets=list(histogram(b17=1)))]


# --- the window ----------------------------------------------------------------------------------


def test_rate_and_p99_from_two_reports() -> None:
    clock = FakeClock()
    w = TrafficWindow(window_s=10, now=clock)
    w.add(parse_report(report("n1", "eu", {("t/hello", "1"): histogram(b5=1000)})))
    clock.advance(2)
    w.add(parse_report(report("n1", "eu", {("t/hello", "1"): histogram(b5=1100)})))
    view = w.view("t")
    [row] = view["regions"]
    # 100 new requests; the series is 2 s old, so the window covers 2 s of it, not 10.
    assert row["function"] == "hello" and row["region"] == "eu"
    assert row["requests"] == 100
    assert row["requests_per_s"] == 50.0
    assert row["p99_ms"] == pytest.approx(1.99)
    assert row["versions"] == {"1": 50.0}
    assert view["functions"] == [{"function": "hello", **{k: row[k] for k in row if
                                                           k not in ("function", "region")}}]


def test_first_report_is_only_a_baseline() -> None:
    clock = FakeClock()
    w = TrafficWindow(window_s=10, now=clock)
    w.add(parse_report(report("n1", "eu", {("t/hello", "1"): histogram(b5=1000)})))
    clock.advance(1)
    assert w.view("t")["regions"] == []


def test_a_series_younger_than_the_window_counts_from_its_first_request() -> None:
    clock = FakeClock()
    w = TrafficWindow(window_s=10, now=clock)
    since = clock() - 4
    w.add(parse_report(report("n1", "eu", {("t/f", "1"): histogram(b5=40)}, since=since)))
    [row] = w.view("t")["regions"]
    assert (row["requests"], row["requests_per_s"]) == (40, 10.0)  # 40 requests in its 4 s
    # A clock ahead of ours: counted, with a rate once some of our time has passed.
    w.add(parse_report(report("n2", "eu", {("t/g", "1"): histogram(b5=6)}, since=clock() + 5)))
    assert [r["function"] for r in w.view("t")["regions"]] == ["f"]
    clock.advance(2)
    # 40 requests in 6 s; 6 in the 2 s since we first heard of it.
    assert [r["requests_per_s"] for r in w.view("t")["regions"]] == [6.667, 3.0]


def test_merges_nodes_and_versions_per_region_and_over_regions() -> None:
    clock = FakeClock()
    w = TrafficWindow(window_s=10, now=clock)
    zero = histogram()
    first = {("t/f", "1"): zero, ("t/f", "2"): zero}
    for node, region in (("a", "eu"), ("b", "eu"), ("c", "us")):
        w.add(parse_report(report(node, region, first)))
    clock.advance(10)
    w.add(parse_report(report("a", "eu", {("t/f", "1"): histogram(b2=90),
                                          ("t/f", "2"): histogram(b9=10)})))
    w.add(parse_report(report("b", "eu", {("t/f", "1"): histogram(b2=100)})))
    w.add(parse_report(report("c", "us", {("t/f", "1"): histogram(b3=50)})))
    view = w.view("t")
    eu, us = view["regions"]
    assert (eu["region"], eu["requests"], eu["requests_per_s"]) == ("eu", 200, 20.0)
    assert eu["versions"] == {"1": 19.0, "2": 1.0}
    # 190 requests in (0.1 ms, 0.2 ms], 10 in (20 ms, 50 ms]: the canary's slow ones are the tail.
    assert LATENCY_BUCKETS_S[1:3] == (0.0001, 0.0002) and LATENCY_BUCKETS_S[8:10] == (0.02, 0.05)
    assert eu["p50_ms"] == pytest.approx(0.1 + 0.1 * 100 / 190, abs=0.001)
    assert eu["p99_ms"] == pytest.approx(20 + 30 * (198 - 190) / 10)
    assert (us["region"], us["requests_per_s"]) == ("us", 5.0)
    [total] = view["functions"]
    assert total["requests"] == 250 and total["requests_per_s"] == 25.0
    assert total["versions"] == {"1": 24.0, "2": 1.0}


def test_old_differences_leave_the_window() -> None:
    clock = FakeClock()
    w = TrafficWindow(window_s=10, now=clock)
    w.add(parse_report(report("n", "eu", {("t/f", "1"): histogram()})))
    clock.advance(1)
    w.add(parse_report(report("n", "eu", {("t/f", "1"): histogram(b4=30)})))
    clock.advance(9.5)
    assert w.view("t")["regions"][0]["requests"] == 30
    clock.advance(1)
    assert w.view("t")["regions"] == []


def test_a_restarted_node_counts_from_zero_and_never_goes_negative() -> None:
    clock = FakeClock()
    w = TrafficWindow(window_s=10, now=clock)
    w.add(parse_report(report("n", "eu", {("t/f", "1"): histogram(b4=500)}, started=1.0)))
    clock.advance(1)
    # Same process start but a counter went down: a restart all the same.
    w.add(parse_report(report("n", "eu", {("t/f", "1"): histogram(b4=7)}, started=1.0)))
    clock.advance(1)
    w.add(parse_report(report("n", "eu", {("t/f", "1"): histogram(b4=3)}, started=2.0)))
    assert w.view("t")["regions"][0]["requests"] == 10


def test_a_tenant_sees_only_its_own_functions() -> None:
    clock = FakeClock()
    w = TrafficWindow(window_s=10, now=clock)
    series = {("acme/f", "1"): histogram(), ("other/f", "1"): histogram()}
    w.add(parse_report(report("n", "eu", series)))
    clock.advance(1)
    w.add(parse_report(report("n", "eu", {k: histogram(b1=5) for k in series})))
    assert [r["function"] for r in w.view("acme")["regions"]] == ["f"]
    assert w.view("acm")["regions"] == []  # a prefix of another tenant's name is not enough


def test_idle_series_are_forgotten_and_tracks_are_bounded() -> None:
    clock = FakeClock()
    w = TrafficWindow(window_s=10, now=clock, forget_after_s=60, max_tracks=2)
    w.add(parse_report(report("n", "eu", {("t/a", "1"): histogram(), ("t/b", "1"): histogram(),
                                          ("t/c", "1"): histogram()})))
    assert w.refused == 1
    clock.advance(61)
    w.add(parse_report(report("m", "eu", {("t/c", "1"): histogram()})))
    assert w.refused == 1  # the idle ones were forgotten, so there is room again


def entry(**change: Any) -> dict[str, Any]:
    """One well-formed series entry with `change` applied (None removes the key)."""
    good = {"function": "t/f", "version": "1", "since_unix": 1, "buckets": [0] * BUCKET_COUNT}
    return {k: v for k, v in {**good, **change}.items() if v is not None}


@pytest.mark.parametrize(
    "change",
    [
        {"node_id": ""},
        {"node_id": 5},
        {"region": "x" * 65},
        {"started_unix": "soon"},
        {"started_unix": True},
        {"started_unix": 1e20},
        {"series": {}},
        {"series": [5]},
        {"series": [entry(since_unix=None)]},
        {"series": [entry(since_unix=-1)]},
        {"series": [entry(function="noslash")]},
        {"series": [entry(function="t/Bad Name")]},
        {"series": [entry(version=1)]},
        {"series": [entry(buckets=[0] * 3)]},
        {"series": [entry(buckets=[-1] * BUCKET_COUNT)]},
        {"series": [entry(buckets=[0.5] * BUCKET_COUNT)]},
        {"series": [entry(buckets=[True] * BUCKET_COUNT)]},
    ],
)
def test_malformed_reports_are_bad_requests(change: dict[str, Any]) -> None:
    body = {**report("n", "eu", {("t/f", "1"): histogram()}), **change}
    with pytest.raises(BadRequest):
        parse_report(body)


def test_too_many_series_in_one_report_is_too_large() -> None:
    series = {(f"t/f{i}", "1"): histogram() for i in range(MAX_SERIES_PER_REPORT + 1)}
    with pytest.raises(PayloadTooLarge):
        parse_report(report("n", "eu", series))
