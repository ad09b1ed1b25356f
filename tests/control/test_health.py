"""The control plane's active node checks, pure parts: which nodes are checked, what
`/v1/status`, `/v1/regions` and `edge regions` make of the results. Fake clocks, no sockets."""

from __future__ import annotations

import pytest

from edge.control.api import regions_json
from edge.control.health import CheckTable, health_url
from edge.control.records import Node
from edge.control.region_commands import region_row
from edge.control.status import status_json
from edge.traffic.health import NodeState

from .conftest import FakeClock

NOW = 1_700_000_000.0


def node(node_id: str, url: str = "", region: str = "eu-west", seen: float = NOW,
         healthy: bool = True) -> Node:
    return Node(node_id, region, 3, seen, healthy, None, "", url)


def test_checks_follow_the_node_table() -> None:
    table = CheckTable(rise=2, fall=2, interval_s=1.0)
    stop, start = table.follow([node("a", "http://127.0.0.1:1/"), node("b"),
                                node("c", "http://127.0.0.1:3")])
    assert (stop, start) == ([], ["a", "c"])  # b reported no url: nothing to check
    assert table.checks["a"].url == "http://127.0.0.1:1/healthz"
    assert table.follow([node("a", "http://127.0.0.1:1/"), node("c", "http://127.0.0.1:3")]) \
        == ([], [])
    a = table.checks["a"].health
    # c moved to another address: another process, checked afresh; a left the table.
    stop, start = table.follow([node("c", "http://127.0.0.1:4")])
    assert (sorted(stop), start) == (["a", "c"], ["c"])
    assert set(table.checks) == {"c"} and table.checks["c"].health is not a
    assert table.checks["c"].health.state is NodeState.UNKNOWN


def test_views_show_state_and_when_it_changed_on_the_wall_clock() -> None:
    mono = FakeClock(500.0)
    seen: list[NodeState] = []
    table = CheckTable(rise=2, fall=2, interval_s=1.0, on_change=seen.append)
    table.follow([node("a", "http://127.0.0.1:1")])
    assert table.views(mono(), NOW) == {"a": {"check": "unknown", "check_changed_unix": None}}
    health = table.checks["a"].health
    health.check_ok(mono())
    mono.advance(1)
    health.check_failed(mono())
    assert table.views(mono(), NOW)["a"]["check"] == "up"  # one failure < fall
    mono.advance(1)
    health.check_failed(mono())  # down at mono 502
    mono.advance(5)
    assert table.views(mono(), NOW) == {"a": {"check": "down", "check_changed_unix": NOW - 5}}
    assert seen == [NodeState.UP, NodeState.DOWN]


def test_bad_settings_fail_when_the_table_is_made() -> None:
    with pytest.raises(ValueError, match="rise and fall"):
        CheckTable(rise=0, fall=2, interval_s=1.0)
    with pytest.raises(ValueError, match="interval_s"):
        CheckTable(rise=1, fall=1, interval_s=0)


def test_health_url_joins_with_or_without_a_slash() -> None:
    assert health_url("http://h:1") == health_url("http://h:1/") == "http://h:1/healthz"


def test_status_reports_checks_per_node_and_region() -> None:
    nodes = [node("a", "http://a"), node("b", "http://b"), node("c")]
    checks = {"a": {"check": "up", "check_changed_unix": NOW - 3},
              "b": {"check": "down", "check_changed_unix": NOW - 1}}
    out = status_json(3, nodes, NOW, 60.0, checks)
    rows = {r["id"]: (r["check"], r["check_changed_unix"]) for r in out["nodes"]}
    assert rows == {"a": ("up", NOW - 3), "b": ("down", NOW - 1), "c": ("unknown", None)}
    region = out["regions"]["eu-west"]
    assert (region["nodes"], region["healthy"], region["check_up"], region["check_down"]) \
        == (3, 3, 1, 1)
    assert status_json(3, nodes, NOW, 60.0)["nodes"][0]["check"] == "unknown"


def test_regions_count_up_nodes_by_check_then_by_report() -> None:
    stale = NOW - 600
    nodes = [
        node("up", "http://up"),                       # checked up: up
        node("down", "http://down"),                   # reports healthy, check says down
        node("quiet", "http://quiet", seen=stale),     # stopped reporting, but answers checks
        node("sick", "http://sick", healthy=False),    # up by check, unhealthy by its word
        node("new", "http://new"),                     # not checked yet: its fresh report
        node("gone", "http://gone", seen=stale),       # neither checked nor fresh
    ]
    checks = {i: {"check": s, "check_changed_unix": None}
              for i, s in [("up", "up"), ("down", "down"), ("quiet", "up"), ("sick", "up")]}
    (r,) = regions_json({}, nodes, NOW, 60.0, checks)
    assert (r["nodes"], r["healthy_nodes"], r["stale_nodes"]) == (6, 3, 2)
    assert (r["up_nodes"], r["check_up"], r["check_down"]) == (3, 3, 1)
    assert r["node_urls"] == ["http://new", "http://up"]
    (unchecked,) = regions_json({}, nodes, NOW, 60.0)
    assert unchecked["up_nodes"] == unchecked["healthy_nodes"] == 3


def test_edge_regions_health_uses_the_check() -> None:
    row = {"name": "eu-west", "state": "active", "share": 1.0, "weight": 100,
           "healthy_nodes": 2, "up_nodes": 1, "nodes": 2, "stale_nodes": 0,
           "requests_per_s": None}
    assert region_row(row)[4:6] == ("degraded", "1/2")
    assert region_row({**row, "up_nodes": 0})[4:6] == ("down", "0/2")
    older = {k: v for k, v in row.items() if k != "up_nodes"}  # a server without checks
    assert region_row(older)[4:6] == ("healthy", "2/2")
