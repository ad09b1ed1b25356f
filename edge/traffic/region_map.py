"""The region map the DNS server serves, from traffic.toml and the control plane (pure).

`GET /v1/regions` lists each region's location, weight and drain, and the nodes reporting from
it with the addresses they advertise (`endpoints`: node id, URL, IPv4, IPv6, stale). The merge,
region by region (the control plane wins where it says something):

- location: the control plane's (`edge region set`), else traffic.toml's;
- nodes: the control plane's fresh endpoints that have an address (health URL: the node's URL
  + /healthz), else traffic.toml's `[[region.node]]`s;
- weight: traffic.toml's, else 100 (a weight set at the control plane is laid over it by the
  drain follower, as before).

A region makes the map only with a location and at least one node; one that loses either
leaves it. traffic.toml regions the control plane does not list stay as configured. Malformed
entries are skipped, never fatal: a bad listing must not take DNS down.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from edge.traffic.regions import REGION_NAME_RE, Node, Region


def merge_region_map(base: tuple[Region, ...], listing: list[Any]) -> tuple[Region, ...]:
    """traffic.toml's regions (`base`) with the control plane's `listing` laid over them:
    traffic.toml's order first, then regions only the control plane knows, by name."""
    listed: dict[str, dict[str, Any]] = {}
    for entry in listing:
        if isinstance(entry, dict) and REGION_NAME_RE.match(str(entry.get("name", ""))):
            listed[str(entry["name"])] = entry
    known = {r.name: r for r in base}
    names = [r.name for r in base] + sorted(n for n in listed if n not in known)
    taken = {n.name for r in base if r.name not in listed for n in r.nodes}
    out = []
    for name in names:
        entry = listed.get(name)
        region = known.get(name) if entry is None else _merged(name, entry, known.get(name), taken)
        if region is not None:
            out.append(region)
    return tuple(out)


def _merged(
    name: str, entry: dict[str, Any], configured: Region | None, taken: set[str]
) -> Region | None:
    location = _location(entry)
    if location is None and configured is not None:
        location = (configured.latitude_deg, configured.longitude_deg)
    nodes = []
    for raw in entry.get("endpoints") or ():
        node = _node(name, raw)
        if node is not None and node.name not in taken:  # node names key the health table
            taken.add(node.name)
            nodes.append(node)
    if not nodes and configured is not None:
        nodes = [n for n in configured.nodes if n.name not in taken]
        taken.update(n.name for n in nodes)
    if location is None or not nodes:
        return None
    weight = 100 if configured is None else configured.weight
    return Region(name, location[0], location[1], tuple(nodes), weight)


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
    v4, v6 = _ip(raw.get("ipv4"), 4), _ip(raw.get("ipv6"), 6)
    if v4 is None and v6 is None:
        return None
    return Node(
        node_id, region,
        v4 if isinstance(v4, ipaddress.IPv4Address) else None,
        v6 if isinstance(v6, ipaddress.IPv6Address) else None,
        url.rstrip("/") + "/healthz",
    )  # fmt: skip


def _ip(value: Any, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    return addr if addr.version == version else None
