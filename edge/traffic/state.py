"""The live traffic state: one NodeHealth per node and one Drain per region, read per query.

Only the event loop touches it (health checker and DNS handler run on the same loop), so it
needs no locking.
"""

from __future__ import annotations

from edge.traffic.drain import Drain
from edge.traffic.health import NodeHealth
from edge.traffic.regions import IPAddress, Node, TrafficConfig
from edge.traffic.steering import RegionStatus, quantize_share


class TrafficState:
    def __init__(self, config: TrafficConfig) -> None:
        self.config = config
        h = config.health
        self.health: dict[str, NodeHealth] = {
            n.name: NodeHealth(rise=h.rise, fall=h.fall, interval_s=h.interval_s)
            for n in config.nodes
        }
        self.drains: dict[str, Drain] = {r.name: Drain() for r in config.regions}
        # Weights set at the control plane, over traffic.toml's (see drain_follower).
        self.weights: dict[str, int] = {}

    def status(self, now: float, family: int) -> dict[str, RegionStatus]:
        """Regions that have addresses of `family` (4 or 6), with health for that family."""
        out = {}
        for r in self.config.regions:
            nodes = [n for n in r.nodes if _address(n, family) is not None]
            if nodes:
                healthy = any(self.health[n.name].serving for n in nodes)
                share = quantize_share(self.drains[r.name].share(now))
                out[r.name] = RegionStatus(healthy, share, self.weights.get(r.name, r.weight))
        return out

    def fingerprint(self, now: float) -> tuple[object, ...]:
        """Everything answers depend on besides the query: node health and drain shares (to
        the 1% steps steering uses). Equal fingerprints mean equal answers."""
        return (
            tuple(h.serving for h in self.health.values()),
            tuple(quantize_share(d.share(now)) for d in self.drains.values()),
            tuple(sorted(self.weights.items())),
        )

    def addresses(self, region: str, family: int) -> list[IPAddress]:
        """Addresses of the region's served nodes; all of them when none is (fail open)."""
        nodes = [n for n in self.config.region(region).nodes if _address(n, family) is not None]
        serving = [n for n in nodes if self.health[n.name].serving] or nodes
        return [a for n in serving if (a := _address(n, family)) is not None]


def _address(node: Node, family: int) -> IPAddress | None:
    return node.ipv4 if family == 4 else node.ipv6
