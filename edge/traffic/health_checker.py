"""Polls every node's health URL with httpx and feeds the results to `health.NodeHealth`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import httpx

from edge.traffic.regions import Node
from edge.traffic.state import TrafficState

log = logging.getLogger(__name__)


class HealthChecker:
    """One task per node: probe, record, sleep out the rest of the interval. `aclose` stops all."""

    def __init__(self, state: TrafficState, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.clock = clock
        cfg = state.config.health
        self.interval_s = cfg.interval_s
        self.timeout_s = cfg.timeout_s
        # trust_env=False: proxies from the environment must not sit between us and our nodes.
        self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(node), name=f"health:{node.name}")
            for node in self.state.config.nodes
        ]

    async def probe(self, node: Node) -> bool:
        """A 2xx within the timeout passes; anything else (refused, reset, slow, 5xx) fails."""
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self._client.get(node.health_url, timeout=self.timeout_s)
        except (httpx.HTTPError, TimeoutError, OSError):
            return False
        return 200 <= response.status_code < 300

    async def _loop(self, node: Node) -> None:
        health = self.state.health[node.name]
        while True:
            started = self.clock()
            ok = await self.probe(node)
            now = self.clock()
            before = health.state
            after = health.check_ok(now) if ok else health.check_failed(now)
            if after is not before:
                log.info("health: %s %s -> %s", node.name, before.value, after.value)
            await asyncio.sleep(max(0.0, self.interval_s - (now - started)))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._client.aclose()
