"""Polls every node's health URL with httpx and feeds the results to `health.NodeHealth`.

Follows the region map: a node added to it gets a probe task, a removed one loses its task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import httpx

from edge.traffic.regions import Node, Region
from edge.traffic.state import TrafficState

log = logging.getLogger(__name__)


class HealthChecker:
    """One task per node: probe, record, sleep out the rest of the interval. `aclose` stops all.
    Start and stop on the event loop: region map changes (`sync`) create tasks there."""

    def __init__(self, state: TrafficState, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.clock = clock
        cfg = state.config.health
        self.interval_s = cfg.interval_s
        self.timeout_s = cfg.timeout_s
        # trust_env=False: proxies from the environment must not sit between us and our nodes.
        self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        self._tasks: dict[Node, asyncio.Task[None]] = {}

    def start(self) -> None:
        self.state.region_listeners.append(self._regions_changed)
        self.sync()

    @property
    def probing(self) -> set[str]:
        """Names of the nodes with a probe task."""
        return {node.name for node in self._tasks}

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
            self._tasks[node] = asyncio.create_task(self._loop(node), name=f"health:{node.name}")

    async def probe(self, node: Node) -> bool:
        """A 2xx within the timeout passes; anything else (refused, reset, slow, 5xx) fails."""
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self._client.get(node.health_url, timeout=self.timeout_s)
        except (httpx.HTTPError, TimeoutError, OSError):
            return False
        return 200 <= response.status_code < 300

    async def _loop(self, node: Node) -> None:
        while True:
            started = self.clock()
            ok = await self.probe(node)
            now = self.clock()
            health = self.state.health.get(node.name)
            if health is None:  # left the map while the probe ran; sync cancels this task
                return
            before = health.state
            after = health.check_ok(now) if ok else health.check_failed(now)
            if after is not before:
                log.info("health: %s %s -> %s", node.name, before.value, after.value)
            await asyncio.sleep(max(0.0, self.interval_s - (now - started)))

    async def aclose(self) -> None:
        if self._regions_changed in self.state.region_listeners:
            self.state.region_listeners.remove(self._regions_changed)
        tasks = list(self._tasks.values())
        self._tasks = {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.aclose()
