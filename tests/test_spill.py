"""The L7 spill decision (pure): who a draining node forwards, and to which node, on a fake clock.
The same decision over real sockets is in test_traffic_integration.py."""

from __future__ import annotations

import ipaddress

import pytest

from edge.control.records import NodeEndpoint
from edge.control.regions import Region, RegionDrain
from edge.node.spill import (
    Spill,
    Topology,
    client_bucket,
    region_order,
    spill_decision,
)
from edge.traffic.steering import bucket

T0 = 1_700_000_000.0
CLIENTS = [f"81.2.{i // 250}.{i % 250}" for i in range(0, 250 * 40, 5)]  # 2000, 40 subnets


def topology(drain: RegionDrain | None, **extra: Region) -> Topology:
    regions = {
        "eu-west": Region("eu-west", 53.35, -6.26, 100, drain),  # Dublin
        "us-east": Region("us-east", 39.04, -77.49, 100),  # Ashburn
        "ap-south": Region("ap-south", 19.08, 72.88, 100),  # Mumbai
        "eu-central": Region("eu-central", 50.11, 8.68, 100),  # Frankfurt
        **extra,
    }
    nodes = {
        f"{r}-{i}": NodeEndpoint(f"{r}-{i}", r, f"http://{r}-{i}:8787")
        for r in regions for i in (1, 2)
    }  # fmt: skip
    return Topology(regions, nodes)


def draining(over_s: float = 100.0) -> RegionDrain:
    return RegionDrain("eu-west", "drain", T0, over_s, 1.0)


def decide(t: Topology, now: float, client: str, **kw: object) -> Spill | None:
    return spill_decision(t, "eu-west", "http://eu-west-1:8787", now, client, **kw)  # type: ignore[arg-type]


def test_nothing_spills_while_the_region_keeps_its_full_share() -> None:
    for t in (topology(None), topology(draining()), Topology()):
        assert all(decide(t, T0, c) is None for c in CLIENTS[:200])


def test_the_spilled_share_follows_the_ramp_and_the_kept_set_only_shrinks() -> None:
    t = topology(draining(100.0))
    kept_before: set[str] | None = None
    for elapsed, share in [(0, 1.0), (25, 0.75), (50, 0.5), (90, 0.1), (100, 0.0), (500, 0.0)]:
        kept = {c for c in CLIENTS if decide(t, T0 + elapsed, c) is None}
        # The bucket is per client subnet (40 of them), so the kept fraction is coarse.
        assert abs(len(kept) / len(CLIENTS) - share) <= 0.2, (elapsed, len(kept))
        if kept_before is not None:
            assert kept <= kept_before  # a client that was forwarded is never taken back
        kept_before = kept
    assert kept_before == set()


def test_the_client_bucket_is_the_dns_servers_bucket_for_its_subnet() -> None:
    # A client the DNS server still sends here (bucket < share) is served here.
    assert client_bucket("81.2.69.160", "eu-west") == bucket(
        ipaddress.ip_network("81.2.69.0/24"), "eu-west"
    )
    assert client_bucket("2001:db8:1:2::5", "eu-west") == bucket(
        ipaddress.ip_network("2001:db8:1::/56"), "eu-west"
    )
    assert 0 <= client_bucket("not-an-ip", "eu-west") < 1


def test_the_target_is_the_nearest_region_not_drained_and_the_same_node_per_client() -> None:
    t = topology(draining(10.0))
    assert region_order(t, "eu-west") == ["eu-central", "us-east", "ap-south"]
    spills = [decide(t, T0 + 10, c) for c in CLIENTS]
    assert {s.region for s in spills if s} == {"eu-central"}
    assert {s.url for s in spills if s} == {"http://eu-central-1:8787", "http://eu-central-2:8787"}
    assert spills == [decide(t, T0 + 10, c) for c in CLIENTS]  # sticky
    # Frankfurt drained too: the next nearest, Ashburn; a draining (not drained) one still counts.
    frankfurt_out = RegionDrain("eu-central", "drain", T0 - 100, 1.0, 1.0)
    t2 = topology(
        draining(10.0), **{"eu-central": Region("eu-central", 50.11, 8.68, 100, frankfurt_out)}
    )
    assert {s.region for c in CLIENTS if (s := decide(t2, T0 + 10, c))} == {"us-east"}


def test_standby_and_unlocated_regions_come_last_and_failed_targets_are_skipped() -> None:
    t = topology(draining(10.0), **{
        "eu-central": Region("eu-central", 50.11, 8.68, 0),  # standby
        "eu-north": Region("eu-north"),  # no location
    })  # fmt: skip
    t = Topology(t.regions, {**t.nodes, "n1": NodeEndpoint("n1", "eu-north", "http://n1:1")})
    assert region_order(t, "eu-west") == ["us-east", "ap-south", "eu-north", "eu-central"]
    avoid = {"http://us-east-1:8787", "http://us-east-2:8787"}
    got = decide(t, T0 + 10, CLIENTS[0], avoid=avoid)
    assert got is not None and got.region == "ap-south"


@pytest.mark.parametrize("own_url", ["http://us-east-1:8787"])
def test_never_twice_never_to_itself_and_nowhere_means_here(own_url: str) -> None:
    t = topology(draining(1.0))
    assert all(decide(t, T0 + 5, c, already_spilled=True) is None for c in CLIENTS[:100])
    lonely = Topology(
        {"eu-west": Region("eu-west", 53.35, -6.26, 100, draining(1.0))},
        {"me": NodeEndpoint("me", "eu-west", "http://eu-west-1:8787")},
    )
    assert all(decide(lonely, T0 + 5, c) is None for c in CLIENTS[:100])
    # A node of a region with no location still finds targets (by name order).
    t3 = Topology({"x": Region("x", None, None, None, draining(1.0))}, t.nodes)
    got = spill_decision(t3, "x", own_url, T0 + 5, CLIENTS[0])
    assert got is not None and got.region == "ap-south"


def test_an_overloaded_request_goes_to_the_next_region_whatever_the_share() -> None:
    """Overflow: the request did not run here; the same target as a drain would pick, even
    with the region at its full share, never twice, and None without regions or targets."""

    def overflow(t: Topology, client: str, **kw: object) -> Spill | None:
        return decide(t, T0, client, overflow=True, **kw)

    t = topology(None)
    spills = [overflow(t, c) for c in CLIENTS[:100]]
    assert {s.region for s in spills if s} == {"eu-central"} and None not in spills
    assert spills == [overflow(t, c) for c in CLIENTS[:100]]  # the same node per client
    assert overflow(t, CLIENTS[0], already_spilled=True) is None
    avoided = {"http://eu-central-1:8787", "http://eu-central-2:8787"}
    other = overflow(t, CLIENTS[0], avoid=avoided)
    assert other is not None and other.region == "us-east"
    assert overflow(Topology(), CLIENTS[0]) is None  # a static node: no regions
    alone = Topology({"eu-west": Region("eu-west")}, {})
    assert overflow(alone, CLIENTS[0]) is None
