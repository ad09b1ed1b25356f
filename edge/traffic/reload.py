"""Re-reading traffic.toml while serving (SIGHUP): what a new file changes, decided without I/O.

A valid file replaces the whole configuration: zone records, TTLs, steering, regions and nodes,
health settings. Settings bound to sockets and processes made at start (`RESTART_ONLY`) keep
their running values until a restart, and the plan says which of them the file changed.
Health follows nodes, not files: a node that stays with the same health URL keeps its state
(`TrafficState.reconfigure`), so a down node stays down without failing `fall` checks again.

With `edge dns --control` the map is traffic.toml's regions plus those only the control plane
lists (edge/traffic/region_map.py); a reload keeps the listed ones it already serves, and the
next poll (within a second) rebuilds the merge from the control plane's listing.

`install` applies a plan to one process's state and Authority, in the parent and in every UDP
worker (the plan travels to workers over their pipe, edge/traffic/workers.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass

from edge.errors import ConfigError
from edge.traffic.dns import Authority
from edge.traffic.regions import DnsConfig, Region, TrafficConfig
from edge.traffic.state import TrafficState
from edge.traffic.steering import GeoSource, Steerer

# [dns] keys bound to what start made: sockets (port, threads), processes, the /metrics listener.
RESTART_ONLY = ("port", "workers", "udp_threads", "metrics_listen")


@dataclass(frozen=True)
class ReloadPlan:
    config: TrafficConfig  # the new file with the restart-only settings as running
    regions: tuple[Region, ...]  # the region map to serve
    restart_needed: tuple[str, ...] = ()  # restart-only settings the file changed
    changes: tuple[str, ...] = ()  # what else changed, for the log


def require_regions(config: TrafficConfig, source: str, following_control: bool) -> None:
    """Without a control plane there is nothing to answer with but traffic.toml's regions."""
    if not config.regions and not following_control:
        raise ConfigError(
            f"{source} has no [[region]]: add regions, or give --control URL --token T "
            "to take the region map from the control plane"
        )


def plan_reload(
    running: TrafficConfig,
    new: TrafficConfig,
    serving: tuple[Region, ...],
    *,
    source: str,
    following_control: bool,
    from_command_line: Collection[str] = (),
) -> ReloadPlan:
    """What to serve after re-reading `source` into `new`, while `running` (with the region
    map `serving`) is served. `from_command_line`: the `RESTART_ONLY` keys the command line
    set (`--port`, `--workers`, `--metrics-listen`); the file's value for those is not in force
    whatever it says, so its change needs no restart and is not reported as needing one.
    Raises ConfigError when `new` cannot be served at all."""
    require_regions(new, source, following_control)
    kept = {key: getattr(running.dns, key) for key in RESTART_ONLY}
    restart_needed = tuple(
        f"[dns] {key} {value!r} -> {getattr(new.dns, key)!r}"
        for key, value in kept.items()
        if getattr(new.dns, key) != value and key not in from_command_line
    )
    dns_config: DnsConfig = dataclasses.replace(new.dns, **kept)
    config = dataclasses.replace(new, dns=dns_config)
    regions = region_map_after(running.regions, new.regions, serving)
    return ReloadPlan(config, regions, restart_needed, _changes(running, config, serving, regions))


def region_map_after(
    old_base: tuple[Region, ...], new_base: tuple[Region, ...], serving: tuple[Region, ...]
) -> tuple[Region, ...]:
    """The new file's regions, then the served regions that came from the control plane
    (not in the old file) and that the new file does not name, less nodes whose names the
    new file now uses (node names key health)."""
    from_file = {r.name for r in old_base} | {r.name for r in new_base}
    taken = {n.name for r in new_base for n in r.nodes}
    out = list(new_base)
    for region in serving:
        if region.name in from_file:
            continue
        nodes = tuple(n for n in region.nodes if n.name not in taken)
        if nodes:
            out.append(dataclasses.replace(region, nodes=nodes))
    return tuple(out)


def _changes(
    old: TrafficConfig, new: TrafficConfig, before: tuple[Region, ...], after: tuple[Region, ...]
) -> tuple[str, ...]:
    out = []
    old_regions, new_regions = {r.name: r for r in before}, {r.name: r for r in after}
    out += [f"region {name} added" for name in new_regions.keys() - old_regions.keys()]
    out += [f"region {name} removed" for name in old_regions.keys() - new_regions.keys()]
    old_nodes = {n.name: n for r in before for n in r.nodes}
    new_nodes = {n.name: n for r in after for n in r.nodes}
    out += [f"node {name} added" for name in new_nodes.keys() - old_nodes.keys()]
    out += [f"node {name} removed" for name in old_nodes.keys() - new_nodes.keys()]
    out += [
        f"node {name} changed" + (" (health starts over: new health URL)"
                                  if old_nodes[name].health_url != node.health_url else "")
        for name, node in new_nodes.items()
        if name in old_nodes and old_nodes[name] != node
    ]  # fmt: skip
    out += [
        f"region {name} changed (location or weight)"
        for name, region in new_regions.items()
        if name in old_regions and dataclasses.replace(old_regions[name], nodes=()) !=
        dataclasses.replace(region, nodes=())
    ]  # fmt: skip
    for section in ("dns", "health", "steering"):
        if getattr(old, section) != getattr(new, section):
            out.append(f"[{section}] changed")
    return tuple(sorted(out))


def install(plan: ReloadPlan, state: TrafficState, authority: Authority, geo: GeoSource) -> None:
    """Serve `plan` from this process: the Authority's zone (records, a new Steerer, and the
    region map it steers over; its answer caches belonged to the old rules) in one assignment,
    so a query reads all of the old or all of the new. Then the state's map and health
    settings, for the writers (health checks, workers); the map there is already the zone's, so
    its listener leaves the zone alone. The generation moves last (and the parent pushes the
    state to its workers then), so an answer computed from the old zone is filed under a
    fingerprint no later query reads."""
    authority.reconfigure(plan.config, Steerer(plan.regions, plan.config.steering, geo))
    state.reconfigure(plan.config, plan.regions)
