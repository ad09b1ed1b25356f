"""Polls health URLs with httpx and feeds the results to `health.NodeHealth`.

`Prober` and `check_forever` are shared with the control plane's own checks
(`edge.control.health`); `HealthChecker` runs them for the DNS server's nodes and follows the
region map: a node added to it gets a probe task, a removed one loses its task."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable

import httpx

from edge.traffic.health import NodeHealth
from edge.traffic.regions import HealthConfig, Node, Region
from edge.traffic.state import TrafficState

log = logging.getLogger(__name__)


class Prober:
    """One HTTP client for many probes; `aclose` when done."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        # trust_env=False: proxies from the environment must not sit between us and our nodes.
        self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False)

    async def probe(self, url: str) -> bool:
        """A 2xx within the timeout passes; anything else (refused, reset, slow, 5xx) fails."""
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self._client.get(url, timeout=self.timeout_s)
        except (httpx.HTTPError, TimeoutError, OSError):
            return False
        return 200 <= response.status_code < 300

    async def aclose(self) -> None:
        await self._client.aclose()


async def check_forever(
    name: str,
    url: str,
    health_of: Callable[[], NodeHealth | None],
    probe: Callable[[str], Awaitable[bool]],
    clock: Callable[[], float],
) -> None:
    """Probe, record, sleep out the rest of the interval; until cancelled, or until
    `health_of` has no state for the node any more (it left the map while a probe ran)."""
    while True:
        started = clock()
        ok = await probe(url)
        now = clock()
        health = health_of()
        if health is None:
            return
        before = health.state
        after = health.check_ok(now) if ok else health.check_failed(now)
        if after is not before:
            log.info("health: %s %s -> %s", name, before.value, after.value)
        await asyncio.sleep(max(0.0, health.interval_s - (now - started)))


def always(health: NodeHealth) -> Callable[[], NodeHealth | None]:
    """For `check_forever`: a node whose health object never goes away."""
    return lambda: health


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


class HealthChecker:
    """One task per node of the region map. `aclose` stops all.
    Start and stop on the event loop: region map changes (`sync`) create tasks there."""

    def __init__(self, state: TrafficState, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.clock = clock
        cfg = state.config.health
        self.interval_s = cfg.interval_s
        self.timeout_s = cfg.timeout_s
        self._prober = Prober(cfg.timeout_s)
        self._tasks: dict[Node, asyncio.Task[None]] = {}

    def start(self) -> None:
        self.state.region_listeners.append(self._regions_changed)
        self.sync()

    @property
    def probing(self) -> set[str]:
        """Names of the nodes with a probe task."""
        return {node.name for node in self._tasks}

    def reconfigure(self, cfg: HealthConfig) -> None:
        """A reloaded `[health]`: the timeout for the probes that start after this (each
        node's interval, rise and fall live in its NodeHealth: TrafficState.reconfigure)."""
        self.interval_s = cfg.interval_s
        self.timeout_s = self._prober.timeout_s = cfg.timeout_s

    def _regions_changed(self, _regions: tuple[Region, ...]) -> None:
        self.sync()

    def sync(self) -> None:
        """One task per node of the current map (a node whose URL or addresses changed is a
        new node: its probes start over)."""
        nodes = set(self.state.nodes)
        for node in list(self._tasks):
            if node not in nodes:
                self._tasks.pop(node).cancel()
        for node in nodes - self._tasks.keys():
            self._tasks[node] = asyncio.create_task(
                check_forever(node.name, node.health_url,
                              functools.partial(self.state.health.get, node.name),
                              self._prober.probe, self.clock),
                name=f"health:{node.name}",
            )  # fmt: skip

    async def aclose(self) -> None:
        if self._regions_changed in self.state.region_listeners:
            self.state.region_listeners.remove(self._regions_changed)
        tasks = list(self._tasks.values())
        self._tasks = {}
        await cancel_all(tasks)
        await self._prober.aclose()
