"""L7 spill while a region drains (pure): which requests a draining node forwards, and where.

DNS moves new clients away over the drain ramp, but resolvers keep cached answers, so requests
keep arriving at a draining region's nodes. Those nodes answer a share of them (the region's
share now) and forward the rest to a node of the next region, so no request fails and the
region empties at the pace DNS does. The split hashes the client key, so a client is either
kept or forwarded for the whole ramp step, not flipped per request. A forwarded request carries
a marker header and is never forwarded again.

"Next region": the other regions at full share that have reachable nodes, in name order (the
control plane does not know region coordinates yet, so nearest-first is not possible here).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

SPILLED_FROM = "x-edge-spilled-from"


@dataclass(frozen=True)
class RegionsView:
    """What a node knows of the regions, from the control plane's GET /v1/regions."""

    own_share: float = 1.0
    # (region, node URLs) of regions at full share, in preference order.
    targets: tuple[tuple[str, tuple[str, ...]], ...] = field(default_factory=tuple)


def view_from(regions: list[dict[str, Any]], own_region: str, own_url: str) -> RegionsView:
    own_share = 1.0
    targets = []
    for r in sorted(regions, key=lambda r: str(r.get("name"))):
        name = str(r.get("name"))
        share = float(r.get("share", 1.0))
        if name == own_region:
            own_share = share
            continue
        urls = tuple(str(u) for u in r.get("node_urls") or [] if str(u) != own_url)
        if share >= 1.0 and urls:
            targets.append((name, urls))
    return RegionsView(own_share, tuple(targets))


def _fraction(key: str) -> float:
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def spill_target(view: RegionsView, client_key: str, already_spilled: bool) -> str | None:
    """The node URL to forward to, or None to serve here."""
    if already_spilled or view.own_share >= 1.0 or not view.targets:
        return None
    if _fraction("keep\0" + client_key) < view.own_share:
        return None
    _, urls = view.targets[0]
    return urls[int(_fraction("node\0" + client_key) * len(urls))]


def spill_region(view: RegionsView, url: str) -> str:
    """Which region a spill target URL belongs to (a metrics label)."""
    for region, urls in view.targets:
        if url in urls:
            return region
    return "unknown"
