"""L7 spill (pure): which requests a draining node forwards, and where; and where an
overloaded function's request goes instead of a 503 (`overflow`).

DNS moves new clients away over the drain ramp, but resolvers keep cached answers, so requests
keep arriving at a draining region's nodes. Those nodes serve a share of them (the region's
share now, read from the ramp in the snapshot with the caller's clock) and forward the rest to
a node of the next region, so no request fails and the region empties at the pace DNS does.

Who is kept: a client whose bucket is below the share. The bucket is `steering.bucket` of the
client's network (/24 for IPv4, /56 for IPv6: what resolvers send as ECS by default) and the
region, exactly what the DNS server hashes, so a client DNS still sends here is served here and
only clients holding an outdated answer are forwarded. The same client gets the same decision
at every request of a ramp step, and as the share falls the kept set only shrinks.

Where: the next region is the nearest other region by great-circle distance that is not
drained (share > 0) and has a node with a URL; regions without a location come after those
with one, then by name; weight-0 (standby) regions come last. A forwarded request carries
SPILLED_FROM and is never forwarded again. Targets the caller saw fail are skipped for a while
(`avoid`), so a dead node costs one failed attempt, not one per request.

Overflow: a request its function has no worker for here (edge.node.fairshare refused it: its
queue full, or its wait over) has not run, so forwarding it is always safe: it goes to the same
next region's node, whatever this region's share, unless it was forwarded here already.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from edge.control.records import NodeEndpoint
from edge.control.regions import Region
from edge.traffic.steering import bucket, great_circle_km

SPILLED_FROM = "x-edge-spilled-from"
CLIENT_PREFIX_V4 = 24
CLIENT_PREFIX_V6 = 56


@dataclass(frozen=True)
class Topology:
    """Regions and reachable nodes, from the applied snapshot (empty for a static node)."""

    regions: Mapping[str, Region] = field(default_factory=dict)
    nodes: Mapping[str, NodeEndpoint] = field(default_factory=dict)


@dataclass(frozen=True)
class Spill:
    region: str
    url: str


def client_bucket(client_ip: str, region: str) -> float:
    """Where a client falls in [0, 1) for `region`: the DNS server's bucket for its subnet."""
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:  # not an address (a test client, a broken proxy): hash it as text
        return bucket(ipaddress.ip_network("0.0.0.0/32"), f"{region}|{client_ip}")
    prefix = CLIENT_PREFIX_V4 if addr.version == 4 else CLIENT_PREFIX_V6
    return bucket(ipaddress.ip_network(f"{addr}/{prefix}", strict=False), region)


def region_order(topology: Topology, own_region: str) -> list[str]:
    """Other regions, best spill target first (see the module docstring)."""
    own = topology.regions.get(own_region)
    names = {n.region for n in topology.nodes.values()} | set(topology.regions)
    names.discard(own_region)

    def key(name: str) -> tuple[int, float, str]:
        r = topology.regions.get(name, Region(name))
        standby = int(r.weight == 0)
        if own is None or own.latitude_deg is None or own.longitude_deg is None:
            return standby, 0.0, name
        if r.latitude_deg is None or r.longitude_deg is None:
            return standby, float("inf"), name
        km = great_circle_km(own.latitude_deg, own.longitude_deg, r.latitude_deg,
                             r.longitude_deg)  # fmt: skip
        return standby, km, name

    return sorted(names, key=key)


def spill_decision(
    topology: Topology,
    own_region: str,
    own_url: str,
    now_unix: float,
    client_ip: str,
    *,
    already_spilled: bool = False,
    avoid: Collection[str] = (),
    overflow: bool = False,
) -> Spill | None:
    """Where to forward this request, or None to serve it here. `overflow`: it was refused
    here for overload (it did not run): forwarded whatever this region's share; None then means
    answering the 503."""
    if already_spilled or own_region not in topology.regions:
        return None
    if not overflow:
        share = topology.regions[own_region].share(now_unix)
        if share >= 1.0 or client_bucket(client_ip, own_region) < share:
            return None
    for name in region_order(topology, own_region):
        region = topology.regions.get(name)
        if region is not None and region.share(now_unix) <= 0.0:
            continue  # drained: sending clients there would undo its drain
        urls = sorted(
            n.url for n in topology.nodes.values()
            if n.region == name and n.url and n.url != own_url and n.url not in avoid
        )  # fmt: skip
        if urls:
            # Spread over the region's nodes, the same node for the same client.
            pick = int(client_bucket(client_ip, "node|" + name) * len(urls))
            return Spill(name, urls[pick])
    return None  # nowhere to go: serving here beats failing
