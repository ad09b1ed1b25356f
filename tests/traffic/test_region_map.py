"""The region map from the control plane's listing (pure), and the traffic state and steerer
following a new map in process."""

from __future__ import annotations

import ipaddress
from typing import Any

from edge.traffic.drain_follower import apply_listing
from edge.traffic.health import NodeState
from edge.traffic.region_map import merge_region_map
from edge.traffic.regions import Region

from .conftest import MakeConfig, MakeStack

NO_REGIONS = """
[dns]
zone = "edge.test."
hosts = ["www"]
nameservers = ["ns1.edge.test."]

[health]
rise = 2
fall = 2
"""
LONDON = ipaddress.ip_network("81.2.69.160/27")


def endpoint(node: str, ipv4: str | None, ipv6: str | None = None, **extra: Any) -> Any:
    url = f"http://{ipv4 or '[' + str(ipv6) + ']'}:8787"
    return {"node": node, "url": url, "ipv4": ipv4, "ipv6": ipv6, "stale": False, **extra}


def listed(name: str, lat: float | None, lon: float | None, *endpoints: Any) -> Any:
    return {"name": name, "latitude": lat, "longitude": lon, "weight": None, "drain": None,
            "endpoints": list(endpoints)}  # fmt: skip


def test_listed_regions_become_regions_with_nodes_and_health_urls() -> None:
    regions = merge_region_map((), [
        listed("us-east", 39.04, -77.49, endpoint("us-1", "10.0.0.1")),
        listed("eu-west", 53.35, -6.26, endpoint("eu-1", "10.0.1.1", "2001:db8::1"),
               endpoint("eu-2", None, "2001:db8::2")),
    ])  # fmt: skip
    assert [r.name for r in regions] == ["eu-west", "us-east"]  # by name
    eu = regions[0]
    assert (eu.latitude_deg, eu.longitude_deg, eu.weight) == (53.35, -6.26, 100)
    assert [(n.name, str(n.ipv4), str(n.ipv6)) for n in eu.nodes] == [
        ("eu-1", "10.0.1.1", "2001:db8::1"), ("eu-2", "None", "2001:db8::2"),
    ]  # fmt: skip
    assert eu.nodes[0].health_url == "http://10.0.1.1:8787/healthz"
    assert eu.nodes[1].health_url == "http://[2001:db8::2]:8787/healthz"


def test_regions_without_a_location_or_a_usable_node_stay_out() -> None:
    regions = merge_region_map((), [
        listed("no-location", None, None, endpoint("a", "10.0.0.1")),
        listed("no-nodes", 10.0, 10.0),
        listed("stale-only", 10.0, 10.0, endpoint("b", "10.0.0.2", stale=True)),
        listed("no-address", 10.0, 10.0, endpoint("c", None)),
        listed("ok", 10.0, 10.0, endpoint("d", "10.0.0.3"), endpoint("e", None)),
    ])  # fmt: skip
    assert [(r.name, [n.name for n in r.nodes]) for r in regions] == [("ok", ["d"])]


def test_malformed_entries_are_skipped_not_fatal() -> None:
    regions = merge_region_map((), [
        "not a region", {"name": 7}, {"name": "Bad Name", "latitude": 1, "longitude": 1},
        listed("far-lat", 91.0, 0.0, endpoint("a", "10.0.0.1")),
        {"name": "bool-lat", "latitude": True, "longitude": 0.0,
         "endpoints": [endpoint("b", "10.0.0.2")]},
        listed("ok", 1.0, 2.0,
               {"node": "x", "url": "ftp://10.0.0.9/", "ipv4": "10.0.0.9"},
               {"node": "", "url": "http://10.0.0.8", "ipv4": "10.0.0.8"},
               {"node": "y", "url": "http://10.0.0.7", "ipv4": "2001:db8::7"},  # wrong family
               {"node": "z", "url": "http://10.0.0.6", "ipv4": "10.0.0.6", "ipv6": "nope"},
               "junk"),
    ])  # fmt: skip
    assert [(r.name, [n.name for n in r.nodes]) for r in regions] == [("ok", ["z"])]
    assert regions[0].nodes[0].ipv6 is None


def test_traffic_toml_regions_win_and_come_first(make_config: MakeConfig) -> None:
    base = make_config().regions  # us-east, eu-west, ap-south with 192.0.2.x nodes
    regions = merge_region_map(base, [
        listed("eu-west", 0.0, 0.0, endpoint("eu-cp", "10.0.0.1")),
        listed("sa-east", -23.5, -46.6, endpoint("sa-1", "10.0.2.1"),
               endpoint("eu-west-1", "10.0.2.2")),  # a name traffic.toml's nodes use
    ])  # fmt: skip
    assert regions[:3] == base  # as configured: location and nodes from the file
    assert [r.name for r in regions] == ["us-east", "eu-west", "ap-south", "sa-east"]
    assert [n.name for n in regions[3].nodes] == ["sa-1"]


def test_state_follows_a_new_map_keeping_health_and_drains(make_config: MakeConfig) -> None:
    from edge.traffic.state import TrafficState

    state = TrafficState(make_config("", NO_REGIONS))
    heard: list[tuple[Region, ...]] = []
    state.region_listeners.append(heard.append)
    assert state.status(0.0, 4) == {}
    one = merge_region_map((), [listed("eu-west", 53.35, -6.26, endpoint("eu-1", "10.0.1.1"))])
    state.set_regions(one)
    for _ in range(2):
        state.health["eu-1"].check_failed(0.0)
    assert state.health["eu-1"].state is NodeState.DOWN
    generation = state.generation
    state.set_regions(one)  # the same map again: nothing moves, nothing is dropped
    assert state.generation == generation and heard == [one]

    two = merge_region_map((), [
        listed("eu-west", 53.35, -6.26, endpoint("eu-1", "10.0.1.1"), endpoint("eu-2", "10.0.1.2")),
        listed("us-east", 39.04, -77.49, endpoint("us-1", "10.0.0.1")),
    ])  # fmt: skip
    state.set_regions(two)
    assert state.generation > generation and heard[-1] == two
    assert state.health["eu-1"].state is NodeState.DOWN  # kept across the change
    assert state.health["eu-2"].state is NodeState.UNKNOWN  # new: served until checked
    assert set(state.drains) == {"eu-west", "us-east"}
    assert [str(a) for a in state.addresses("eu-west", 4)] == ["10.0.1.2"]
    assert set(state.status(0.0, 4)) == {"eu-west", "us-east"}

    state.set_regions(merge_region_map((), [
        listed("us-east", 39.04, -77.49, endpoint("us-1", "10.0.0.1")),
    ]))  # fmt: skip
    assert set(state.health) == {"us-1"} and set(state.drains) == {"us-east"}
    assert state.addresses("eu-west", 4) == []  # chosen before the change: no crash


def test_a_worker_state_takes_the_parents_map(make_config: MakeConfig) -> None:
    from edge.traffic.state import TrafficState

    config = make_config("", NO_REGIONS)
    parent, worker = TrafficState(config), TrafficState(config)
    parent.set_regions(merge_region_map((), [
        listed("eu-west", 53.35, -6.26, endpoint("eu-1", "10.0.1.1")),
    ]))  # fmt: skip
    for _ in range(2):
        parent.health["eu-1"].check_failed(0.0)
    worker.apply(parent.snapshot())
    assert worker.regions == parent.regions
    assert worker.health["eu-1"].state is NodeState.DOWN


def test_answers_follow_the_map_from_a_listing(make_stack: MakeStack) -> None:
    stack = make_stack("", NO_REGIONS)
    eu = listed("eu-west", 53.35, -6.26, endpoint("eu-1", "10.0.1.1"))
    us = listed("us-east", 39.04, -77.49, endpoint("us-1", "10.0.0.1"))
    ap = listed("ap-south", 19.08, 72.88, endpoint("ap-1", "10.0.2.1"))  # first by name
    assert stack.authority.steerer.answer(LONDON, stack.state.status(0.0, 4)) is None
    apply_listing(stack.state, [us], 0.0)
    first = stack.authority.steerer.answer(LONDON, stack.state.status(0.0, 4))
    assert first is not None and first.region == "us-east"
    apply_listing(stack.state, [eu, us, ap], 0.0)
    nearest = stack.authority.steerer.answer(LONDON, stack.state.status(0.0, 4))
    assert nearest is not None and nearest.region == "eu-west"
    # A drain in the same listing moves London to the next nearest.
    drain = {"direction": "drain", "started_unix": 0.0, "over_s": 0.0, "from_share": 1.0}
    apply_listing(stack.state, [{**eu, "drain": drain}, us, ap], 0.0)
    drained = stack.authority.steerer.answer(LONDON, stack.state.status(1.0, 4))
    assert drained is not None and drained.region == "us-east"


def test_a_listing_reaches_the_workers_as_one_change(make_stack: MakeStack) -> None:
    """An undrain of one region and a weight set on another in one poll: the state's listeners
    (what pushes it to the UDP worker processes) hear once, with both in place. Before, each
    region's change was pushed on its own, and a worker could answer from the mix (eu-west
    back, us-east not yet on standby)."""
    stack = make_stack("", NO_REGIONS)
    state = stack.state
    eu = listed("eu-west", 53.35, -6.26, endpoint("eu-1", "10.0.1.1"))
    us = listed("us-east", 39.04, -77.49, endpoint("us-1", "10.0.0.1"))
    drain = {"direction": "drain", "started_unix": 0.0, "over_s": 0.0, "from_share": 1.0}
    apply_listing(state, [{**eu, "drain": drain}, us], 0.0)
    assert state.drains["eu-west"].share(1.0) == 0.0
    heard: list[tuple[float, int | None]] = []
    state.listeners.append(lambda: heard.append(
        (state.drains["eu-west"].share(1.0), state.weights.get("us-east"))
    ))  # fmt: skip
    generation = state.generation
    apply_listing(state, [eu, {**us, "weight": 0}], 0.0)
    assert heard == [(1.0, 0)]
    assert state.generation == generation + 1
    apply_listing(state, [eu, {**us, "weight": 0}], 0.0)  # nothing new: nothing told
    assert heard == [(1.0, 0)] and state.generation == generation + 1


def test_health_checker_probes_nodes_that_join_and_forgets_those_that_leave(
    make_config: MakeConfig,
) -> None:
    import asyncio

    from edge.traffic.health_checker import HealthChecker
    from edge.traffic.state import TrafficState

    state = TrafficState(make_config("", NO_REGIONS))
    # Port 9 on loopback refuses: the first failed probe marks the node down.
    gone = {**endpoint("eu-1", "127.0.0.1"), "url": "http://127.0.0.1:9"}

    async def run() -> tuple[NodeState, set[str], set[str]]:
        checker = HealthChecker(state)
        checker.start()
        assert checker.probing == set()
        apply_listing(state, [listed("eu-west", 53.35, -6.26, gone)], 0.0)
        for _ in range(200):
            if state.health["eu-1"].state is NodeState.DOWN:
                break
            await asyncio.sleep(0.01)
        probed = state.health["eu-1"].state
        running = checker.probing
        apply_listing(state, [], 0.0)
        left = checker.probing
        await checker.aclose()
        return probed, running, left

    assert asyncio.run(run()) == (NodeState.DOWN, {"eu-1"}, set())
