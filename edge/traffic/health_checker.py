"""Polls health URLs with httpx and feeds the results to `health.NodeHealth`.

`Prober` and `check_forever` are shared with the control plane's own checks
(`edge.control.health`); `HealthChecker` runs them for the DNS server's configured nodes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import httpx

from edge.traffic.health import NodeHealth
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
    health: NodeHealth,
    probe: Callable[[str], Awaitable[bool]],
    clock: Callable[[], float],
) -> None:
    """Probe, record, sleep out the rest of the interval; until cancelled."""
    while True:
        started = clock()
        ok = await probe(url)
        now = clock()
        before = health.state
        after = health.check_ok(now) if ok else health.check_failed(now)
        if after is not before:
            log.info("health: %s %s -> %s", name, before.value, after.value)
        await asyncio.sleep(max(0.0, health.interval_s - (now - started)))


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


class HealthChecker:
    """One task per configured node. `aclose` stops all."""

    def __init__(self, state: TrafficState, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.clock = clock
        cfg = state.config.health
        self.interval_s = cfg.interval_s
        self.timeout_s = cfg.timeout_s
        self._prober = Prober(cfg.timeout_s)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(
                check_forever(node.name, node.health_url, self.state.health[node.name],
                              self._prober.probe, self.clock),
                name=f"health:{node.name}",
            )
            for node in self.state.config.nodes
        ]  # fmt: skip

    async def aclose(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []
        await self._prober.aclose()
