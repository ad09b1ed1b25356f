"""Following the control plane's region map, drains and weights from the DNS server.

Every poll of GET /v1/regions first replaces the region map (locations and nodes with their
addresses, merged with traffic.toml's by `region_map.merge_region_map`), then the drains and
weights. The control plane keeps each region's drain ramp in unix time (edge.control.regions);
the DNS server's clock is monotonic. Every poll replaces each region's Drain with one that reads the
ramp through the offset between the two clocks, so answers move smoothly between polls. A weight
set at the control plane replaces the region's traffic.toml weight; a region whose weight is not
set there (null) keeps traffic.toml's. If the control plane cannot be reached, the last known
map, ramps and weights stay in force.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from edge.control.client import describe_failure
from edge.traffic.drain import Drain, Ramp
from edge.traffic.region_map import merge_region_map
from edge.traffic.regions import Region
from edge.traffic.state import TrafficState

POLL_S = 1.0
log = logging.getLogger("edge.traffic")


class FollowedDrain(Drain):
    def __init__(self, ramp: Ramp, offset_s: float) -> None:
        super().__init__()
        self.ramp = ramp
        self.offset_s = offset_s  # unix time = monotonic time + offset

    def share(self, now: float) -> float:
        return self.ramp.share(now + self.offset_s)

    def settles_at(self) -> float:
        return self.ramp.start_s + self.ramp.over_s - self.offset_s


def apply_regions(state: TrafficState, regions: list[dict[str, object]], offset_s: float) -> None:
    """Installs the control plane's ramps and weights (the `regions` list of GET /v1/regions)."""
    for region in regions:
        name = str(region.get("name"))
        drain = region.get("drain")
        if name not in state.drains:
            continue
        weight = region.get("weight")
        valid = isinstance(weight, int) and not isinstance(weight, bool) and 0 <= weight <= 100
        state.set_weight(name, weight if isinstance(weight, int) and valid else None)
        current = state.drains[name]
        # Replaced only when it changes: every replacement drops the cached answers.
        if not isinstance(drain, dict):
            if isinstance(current, FollowedDrain):
                state.set_drain(name, Drain())
            continue
        to = 0.0 if drain.get("direction") == "drain" else 1.0
        ramp = Ramp(
            float(drain["started_unix"]),
            float(drain["over_s"]),
            float(drain["from_share"]),
            to,
        )
        if not isinstance(current, FollowedDrain) or current.ramp != ramp:
            state.set_drain(name, FollowedDrain(ramp, offset_s))


def apply_listing(state: TrafficState, regions: list[dict[str, object]], offset_s: float) -> None:
    """The whole of one GET /v1/regions, one change for the state's listeners: the region
    map, then drains and weights over it."""
    before = {r.name: r for r in state.regions}
    with state.batch():
        state.set_regions(merge_region_map(state.config.regions, regions))
        apply_regions(state, regions, offset_s)
    _log_map_changes(before, {r.name: r for r in state.regions})


def _log_map_changes(before: dict[str, Region], after: dict[str, Region]) -> None:
    for name in after.keys() - before.keys():
        nodes = ", ".join(n.name for n in after[name].nodes)
        log.info("region map: %s added (nodes: %s)", name, nodes)
    for name in before.keys() - after.keys():
        log.info("region map: %s removed (no location or no node with an address)", name)
    for name in before.keys() & after.keys():
        old, new = {n.name for n in before[name].nodes}, {n.name for n in after[name].nodes}
        for node in sorted(new - old):
            log.info("region map: node %s joined %s", node, name)
        for node in sorted(old - new):
            log.info("region map: node %s left %s", node, name)


async def follow_drains(state: TrafficState, url: str, token: str) -> None:
    failing = False
    async with httpx.AsyncClient(
        base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=5, trust_env=False
    ) as http:
        while True:
            try:
                r = await http.get("/v1/regions")
                r.raise_for_status()
                apply_listing(state, r.json()["regions"], time.time() - time.monotonic())
                if failing:
                    log.info("control plane reachable again; following its region map")
                failing = False
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
                if not failing:
                    why = describe_failure(e) if isinstance(e, httpx.HTTPError) else repr(e)
                    log.info("cannot read the region map from %s/v1/regions (%s); keeping the "
                             "last known", url.rstrip("/"), why)
                failing = True
            await asyncio.sleep(POLL_S)
