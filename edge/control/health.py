"""The control plane's own active checks of nodes: `GET <url>/healthz` on every node that
reported a url, judged by the DNS server's rise/fall machine (`edge.traffic.health`).

A node's report says what it thinks of itself and stops when it dies; a check is what the
control plane sees from outside, and says DOWN within `fall` intervals of a node going away.
`CheckTable` is the pure part: which node is checked at which URL, and what `edge status` shows.
`ActiveChecks` runs one probe loop per node on the app's event loop and follows the node table.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from edge.control.records import Node
from edge.traffic.health import NodeHealth, NodeState
from edge.traffic.health_checker import Prober, always, cancel_all, check_forever

UNCHECKED: dict[str, Any] = {"check": NodeState.UNKNOWN.value, "check_changed_unix": None}


def health_url(node_url: str) -> str:
    return node_url.rstrip("/") + "/healthz"


@dataclass(frozen=True)
class Check:
    url: str
    health: NodeHealth


class CheckTable:
    """One NodeHealth per checked node. `on_change(state)` is told of every transition."""

    def __init__(
        self, *, rise: int, fall: int, interval_s: float,
        on_change: Callable[[NodeState], None] | None = None,
    ) -> None:  # fmt: skip
        NodeHealth(rise=rise, fall=fall, interval_s=interval_s)  # bad settings fail here, now
        self.rise, self.fall, self.interval_s = rise, fall, interval_s
        self.on_change = on_change
        self.checks: dict[str, Check] = {}

    def follow(self, nodes: Iterable[Node]) -> tuple[list[str], list[str]]:
        """Match the node table: returns (node ids to stop probing, node ids to start). A node
        whose url changed is in both, and starts over from UNKNOWN: it is another process."""
        wanted = {n.id: health_url(n.url) for n in nodes if n.url}
        stop = [i for i, c in self.checks.items() if wanted.get(i) != c.url]
        for i in stop:
            del self.checks[i]
        start = [i for i in sorted(wanted) if i not in self.checks]
        for i in start:
            health = NodeHealth(rise=self.rise, fall=self.fall, interval_s=self.interval_s)
            if self.on_change is not None:
                health.on_change = self._teller(health)
            self.checks[i] = Check(wanted[i], health)
        return stop, start

    def _teller(self, health: NodeHealth) -> Callable[[], None]:
        on_change = self.on_change
        assert on_change is not None
        return lambda: on_change(health.state)

    def views(self, now: float, now_unix: float) -> dict[str, dict[str, Any]]:
        """What `/v1/status` says per checked node; `now` is the table's clock, `now_unix` the
        wall clock (transitions are stamped on the first and shown on the second)."""
        out = {}
        for node_id, c in self.checks.items():
            h = c.health
            changed = None if h.changed_s is None else round(now_unix - (now - h.changed_s), 3)
            out[node_id] = {"check": h.state.value, "check_changed_unix": changed}
        return out


class ActiveChecks:
    """Probes every node of `table` from the event loop it is started on. `aclose` stops all."""

    def __init__(
        self, table: CheckTable, timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.table = table
        self.clock = clock
        self._prober = Prober(timeout_s)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def follow(self, nodes: Iterable[Node]) -> None:
        stop, start = self.table.follow(nodes)
        await cancel_all([self._tasks.pop(i) for i in stop if i in self._tasks])
        for i in start:
            c = self.table.checks[i]
            self._tasks[i] = asyncio.create_task(
                check_forever(i, c.url, always(c.health), self._prober.probe, self.clock),
                name=f"control-health:{i}",
            )

    def views(self) -> dict[str, dict[str, Any]]:
        return self.table.views(self.clock(), time.time())

    async def aclose(self) -> None:
        await cancel_all(list(self._tasks.values()))
        self._tasks = {}
        await self._prober.aclose()
