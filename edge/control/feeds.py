"""What long polls wait on, in memory of the one server process: the newest revision, its
signed snapshot (built once, however many nodes ask), and what every node last reported.

All three are per process: run one server process per data directory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from edge.control.records import Node
from edge.control.status import refused_revision


class RevisionFeed:
    """The latest revision, and a way to wait until it passes a number. `publish` wakes every
    waiter at once (notify_all): a deploy reaches all long-polling nodes in the same instant."""

    def __init__(self, revision: int) -> None:
        self.revision = revision
        self._changed = asyncio.Condition()

    async def publish(self, revision: int) -> None:
        async with self._changed:
            if revision > self.revision:
                self.revision = revision
                self._changed.notify_all()

    async def wait_beyond(self, after: int, timeout_s: float) -> int | None:
        """The current revision once it is above `after` (or below it: the node is ahead of
        this database, e.g. after a restore, and should hear so now), else None on timeout."""
        async with self._changed:
            if self.revision != after:  # wait_for(…, 0) would time out even so
                return self.revision
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.revision != after), timeout_s
                )
            except TimeoutError:
                return None
            return self.revision


class SnapshotCache:
    """The signed snapshot of one revision (the newest asked for), built by one task that every
    concurrent asker awaits. Fifty nodes woken by a deploy would otherwise build and sign fifty
    copies of the same bytes on the worker threads before the first one is answered."""

    def __init__(self, build: Callable[[int], Awaitable[bytes]]) -> None:
        self._build = build
        self._revision = -1
        self._task: asyncio.Task[bytes] | None = None

    async def get(self, revision: int) -> bytes:
        task = self._task
        failed = task is not None and task.done() and (
            task.cancelled() or task.exception() is not None
        )
        if task is None or self._revision != revision or failed:
            self._revision = revision
            task = self._task = asyncio.ensure_future(self._build(revision))
        # shield: one asker going away (a node hanging up) must not cancel the others' build.
        return await asyncio.shield(task)


@dataclass(frozen=True)
class Seen:
    applied_revision: int
    last_report_unix: float
    # The revision its last report said it refused (edge.control.status.refused_revision).
    refused_revision: int | None = None


class NodeWatch:
    """Each node's last report (applied revision, refusal, when), so that waiting until every
    live node has applied a revision reads no database and wakes on the report that completes
    it, or on the refusal that leaves nothing worth waiting for."""

    def __init__(
        self, nodes: Iterable[Node], stale_after_s: float, now: Callable[[], float]
    ) -> None:
        self._seen = {
            n.id: Seen(n.applied_revision, n.last_report_unix, refused_revision(n.last_error))
            for n in nodes
        }
        self._stale_after_s = stale_after_s
        self._now = now
        self._changed = asyncio.Condition()

    async def reported(self, node_id: str, revision: int, last_error: str = "") -> None:
        async with self._changed:
            self._seen[node_id] = Seen(revision, self._now(), refused_revision(last_error))
            self._changed.notify_all()

    def forget(self, node_id: str) -> None:
        self._seen.pop(node_id, None)

    def laggards(self, revision: int) -> list[str]:
        """Nodes still reporting (not stale) that have not applied `revision`."""
        now = self._now()
        return sorted(
            node_id for node_id, s in self._seen.items()
            if now - s.last_report_unix <= self._stale_after_s and s.applied_revision < revision
        )  # fmt: skip

    def waited_for(self, revision: int) -> list[str]:
        """Laggards that may still apply `revision`: not those that refused it or a later one
        (wrong key, tampered snapshot), which keep their last good state whatever we wait."""
        return [
            node_id for node_id in self.laggards(revision)
            if (r := self._seen[node_id].refused_revision) is None or r < revision
        ]  # fmt: skip

    async def wait_applied(self, revision: int, timeout_s: float) -> bool:
        """True once no live node is behind `revision` but those that refused it (`edge deploy`
        then fails at once, `Convergence.stuck`); False if timeout_s passes first."""
        async with self._changed:
            if not self.waited_for(revision):
                return True
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: not self.waited_for(revision)), timeout_s
                )
            except TimeoutError:
                return False
            return True
