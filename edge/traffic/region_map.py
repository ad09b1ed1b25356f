"""The region map the DNS server serves, from traffic.toml and the control plane (pure).

`GET /v1/regions` lists each region's location, weight and drain, and the nodes reporting from
it with the addresses they advertise (`endpoints`: node id, URL, IPv4, IPv6, stale). A region
named in traffic.toml's `[[region]]` is served exactly as configured there (location, nodes,
weight): a file entry is a deliberate override (say, addresses of a load balancer in front of
the nodes), and it keeps deployments that predate this module answering as before. Every other
listed region is built from the listing: the location set with `edge region set`, one node per
fresh endpoint with an address (health URL: the node's URL + /healthz), weight 100 (a weight
set at the control plane is laid over any region by the drain follower, as are drains).

A listed region makes the map only with a location and at least one such node; one that loses
either leaves it. Malformed entries are skipped, never fatal: a bad listing must not take DNS
down.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from edge.config.ip import ip_of_version
from edge.traffic.regions import REGION_NAME_RE, Node, Region


def merge_region_map(base: tuple[Region, ...], listing: list[Any]) -> tuple[Region, ...]:
    """traffic.toml's regions (`base`), then the regions only the control plane's `listing`
    has, by name."""
    known = {r.name for r in base}
    taken = {n.name for r in base for n in r.nodes}  # node names key the health table
    out = list(base)
    entries = [e for e in listing if isinstance(e, dict)]
    for entry in sorted(entries, key=lambda e: str(e.get("name", ""))):
        name = str(entry.get("name", ""))
        if name in known or not REGION_NAME_RE.match(name):
            continue
        known.add(name)
        region = _listed(name, entry, taken)
        if region is not None:
            out.append(region)
    return tuple(out)


def _listed(name: str, entry: dict[str, Any], taken: set[str]) -> Region | None:
    location = _location(entry)
    nodes = []
    for raw in entry.get("endpoints") or ():
        node = _node(name, raw)
        if node is not None and node.name not in taken:
            taken.add(node.name)
            nodes.append(node)
    if location is None or not nodes:
        return None
    return Region(name, location[0], location[1], tuple(nodes))


def _location(entry: dict[str, Any]) -> tuple[float, float] | None:
    lat, lon = entry.get("latitude"), entry.get("longitude")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lat, lon)):
        return None
    assert isinstance(lat, int | float) and isinstance(lon, int | float)
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return float(lat), float(lon)


def _node(region: str, raw: Any) -> Node | None:
    """A fresh endpoint with an http(s) URL and at least one address of the right family."""
    if not isinstance(raw, dict) or raw.get("stale"):
        return None
    node_id, url = raw.get("node"), raw.get("url")
    if not isinstance(node_id, str) or not node_id or not isinstance(url, str):
        return None
    if not url.startswith(("http://", "https://")):
        return None
    v4, v6 = ip_of_version(raw.get("ipv4"), 4), ip_of_version(raw.get("ipv6"), 6)
    if v4 is None and v6 is None:
        return None
    return Node(
        node_id, region,
        v4 if isinstance(v4, ipaddress.IPv4Address) else None,
        v6 if isinstance(v6, ipaddress.IPv6Address) else None,
        url.rstrip("/") + "/healthz",
    )  # fmt: skip

