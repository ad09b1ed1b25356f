"""The live traffic state: the region map, one NodeHealth per node and one Drain per region,
read per query.

The region map starts as traffic.toml's and may be replaced while serving (`set_regions`, from
the control plane's region listing): nodes and regions that stay keep their health and drain,
new ones start unknown (served) and undrained, and `region_listeners` (the Authority, the
health checker) hear of the new map before the generation moves. A reloaded traffic.toml
(`reconfigure`) does the same, and also takes the new health thresholds and starts over the
health of a node whose health URL changed.

A query does not read this map: it reads the one in the Authority's zone (dns.Zone), swapped in
the same assignment as the steering over it, and passes it to `status` and `addresses`; what it
reads here is live and keyed by name (health per node, drain and weight per region).

Answers are cached (`wire_cache`), so every change that can move an answer bumps `generation`:
node health transitions and drain events report themselves through `on_change`, drains and
weights from the control plane go through `set_drain` / `set_weight`. While a drain ramp moves,
the shares (in the 1% steps steering uses) are part of the fingerprint too, so answers follow
the ramp without an event.

Writers: the health checker and drain follower on the event loop, or, in a UDP worker process,
the thread applying the parent's snapshots (`apply`). Readers may run on another thread; a
reader that raced a write serves that one answer and drops its cache at the next query, because
the generation is bumped after the write and readers take the fingerprint before they answer.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from edge.traffic.drain import Drain
from edge.traffic.health import NodeHealth, NodeState
from edge.traffic.regions import IPAddress, Node, Region, TrafficConfig
from edge.traffic.steering import RegionStatus, quantize_share


@dataclass(frozen=True)
class StateSnapshot:
    """What a worker process needs to answer like the parent: picklable, no callbacks."""

    health: tuple[tuple[str, NodeState], ...]
    drains: tuple[tuple[str, Drain], ...]
    weights: tuple[tuple[str, int], ...]
    regions: tuple[Region, ...]


class TrafficState:
    def __init__(self, config: TrafficConfig) -> None:
        self.config = config
        self.generation = 0
        self._moving_until = -math.inf
        self.listeners: list[Callable[[], None]] = []
        self.region_listeners: list[Callable[[tuple[Region, ...]], None]] = []
        self._batching = 0  # nested batch() blocks open
        self._batched = False  # a change inside them, told to listeners at the end
        self.regions = config.regions
        self._by_name = {r.name: r for r in config.regions}
        self.health: dict[str, NodeHealth] = {n.name: self._new_health() for n in self.nodes}
        self.drains: dict[str, Drain] = {}
        for r in config.regions:
            self.set_drain(r.name, Drain())
        # Weights set at the control plane, over the region map's (see drain_follower).
        self.weights: dict[str, int] = {}

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(n for r in self.regions for n in r.nodes)

    def _new_health(self) -> NodeHealth:
        h = self.config.health
        health = NodeHealth(rise=h.rise, fall=h.fall, interval_s=h.interval_s)
        health.on_change = self._changed
        return health

    def set_regions(self, regions: tuple[Region, ...]) -> None:
        """Serve `regions` from now on. Readers may be on other threads, so every dict is
        replaced whole, and grown to cover both maps before the map is swapped, pruned after."""
        if regions == self.regions:
            return
        names = {n.name for r in regions for n in r.nodes}
        health = dict(self.health)
        for name in names - health.keys():
            health[name] = self._new_health()
        drains = dict(self.drains)
        for r in regions:
            if r.name not in drains:
                fresh = Drain()
                fresh.on_change = self._changed
                drains[r.name] = fresh
        self.health, self.drains = health, drains
        self.regions, self._by_name = regions, {r.name: r for r in regions}
        # Before pruning: queries move to the new map (the Authority's zone) while the state
        # still covers the old one, so one that started on the old map keeps its health.
        for listener in self.region_listeners:
            listener(regions)
        self.health = {k: v for k, v in health.items() if k in names}
        self.drains = {k: v for k, v in drains.items() if k in self._by_name}
        self.weights = {k: v for k, v in self.weights.items() if k in self._by_name}
        self._changed()

    def reconfigure(self, config: TrafficConfig, regions: tuple[Region, ...]) -> None:
        """A reloaded traffic.toml: serve `regions` with `config`'s health settings. A node
        that stays with the same health URL keeps its state (a down node stays down, with its
        streaks) under the new rise/fall/interval; one whose URL changed starts over, as a new
        node does (`set_regions`)."""
        before = {n.name: n for n in self.nodes}
        self.config = config  # first: fresh states take its thresholds
        h = config.health
        # Replaced whole, never shrunk here (readers on other threads see a node's state or
        # its replacement, never a gap); set_regions adds the new nodes and prunes the gone.
        health = dict(self.health)
        for node in (n for r in regions for n in r.nodes):
            old = before.get(node.name)
            kept = health.get(node.name)
            if kept is not None and old is not None and old.health_url == node.health_url:
                kept.rise, kept.fall, kept.interval_s = h.rise, h.fall, h.interval_s
            elif kept is not None:
                health[node.name] = self._new_health()
        self.health = health
        if regions != self.regions:
            self.set_regions(regions)  # moves the generation
        else:
            self._changed()  # the same map: answers depend on more than the map

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Changes made inside reach `listeners` (the UDP worker processes) as one, at the end:
        a worker never answers from a mix of old and new (a control plane poll's undrain of
        one region without the weight it set on another, say)."""
        self._batching += 1
        try:
            yield
        finally:
            self._batching -= 1
            if not self._batching and self._batched:
                self._batched = False
                self._changed()

    def _changed(self) -> None:
        if self._batching:
            self._batched = True
            return
        self._moving_until = max((d.settles_at() for d in self.drains.values()), default=-math.inf)
        self.generation += 1
        for listener in self.listeners:
            listener()

    def invalidate(self) -> None:
        """Something answers depend on changed outside this state (the geo database)."""
        self._changed()

    def set_drain(self, region: str, drain: Drain) -> None:
        drain.on_change = self._changed
        self.drains[region] = drain
        self._changed()

    def set_weight(self, region: str, weight: int | None) -> None:
        """`None`: back to the region map's weight."""
        if self.weights.get(region) == weight:
            return
        weights = dict(self.weights)  # replaced whole: a reader never sees it change size
        if weight is None:
            weights.pop(region, None)
        else:
            weights[region] = weight
        self.weights = weights
        self._changed()

    def status(
        self, now: float, family: int, regions: tuple[Region, ...] | None = None
    ) -> dict[str, RegionStatus]:
        """Regions of `regions` (a query's zone, dns.Zone; default the state's map) that have
        addresses of `family` (4 or 6), with health for that family."""
        out = {}
        # One read of each: a map swapped meanwhile (set_regions) costs this query, not a crash.
        health, drains, weights = self.health, self.drains, self.weights
        for r in self.regions if regions is None else regions:
            nodes = [n for n in r.nodes if _address(n, family) is not None]
            if nodes:
                healthy = any(_serving(health, n) for n in nodes)
                drain = drains.get(r.name)
                share = 1.0 if drain is None else quantize_share(drain.share(now))
                out[r.name] = RegionStatus(healthy, share, weights.get(r.name, r.weight))
        return out

    def fingerprint(self, now: float) -> object:
        """Equal fingerprints mean equal answers: the generation, plus the drain shares (to
        the 1% steps steering uses) while a ramp moves. Cheap when nothing moves: it runs
        for every query."""
        if now < self._moving_until:
            shares = tuple(quantize_share(d.share(now)) for d in self.drains.values())
            return (self.generation, shares)
        return self.generation

    def snapshot(self) -> StateSnapshot:
        return StateSnapshot(
            tuple((name, h.state) for name, h in self.health.items()),
            tuple(self.drains.items()),
            tuple(self.weights.items()),
            self.regions,
        )

    def apply(self, snapshot: StateSnapshot) -> None:
        """Take over another process's state (health as decided there, not re-checked)."""
        self.set_regions(snapshot.regions)
        for name, node_state in snapshot.health:
            if name in self.health:
                self.health[name].state = node_state
        for name, drain in snapshot.drains:
            if name in self.drains:
                drain.on_change = self._changed
                self.drains[name] = drain
        self.weights = {k: v for k, v in snapshot.weights if k in self.drains}
        self._changed()

    def addresses(
        self, region: str, family: int, regions: Mapping[str, Region] | None = None
    ) -> list[IPAddress]:
        """Addresses of the region's served nodes, the region as in `regions` (a query's zone;
        default the state's map); all of them when none is served (fail open)."""
        known = (self._by_name if regions is None else regions).get(region)
        if known is None:  # gone from the map since the region was chosen
            return []
        health = self.health
        nodes = [n for n in known.nodes if _address(n, family) is not None]
        serving = [n for n in nodes if _serving(health, n)] or nodes
        return [a for n in serving if (a := _address(n, family)) is not None]


def _serving(health: dict[str, NodeHealth], node: Node) -> bool:
    known = health.get(node.name)
    return known is None or known.serving


def _address(node: Node, family: int) -> IPAddress | None:
    return node.ipv4 if family == 4 else node.ipv6
