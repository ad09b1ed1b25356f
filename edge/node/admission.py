"""The event loop's side of edge.node.fairshare: a request that finds no worker for its
function awaits one, up to `queue_timeout_s`, and is refused (503, FunctionOverloaded) when its
function's queue is full or the wait runs out. A request that finds a worker pays a ticket and
a few counter updates (enter() then leave())."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from edge.errors import FunctionOverloaded
from edge.node.fairshare import FairShare, Ticket


class Admission:
    def __init__(
        self, share: FairShare, queue_timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.share = share
        self.queue_timeout_s = queue_timeout_s
        self.clock = clock
        self.stopping = False

    def enter(self, key: str) -> Ticket | None:
        return self.share.enter(key, self.clock())

    def leave(self, ticket: Ticket, ran_s: float | None = None) -> None:
        """`ran_s`: how long a worker ran it (default: since it was let in)."""
        now = self.clock()
        for waiter in self.share.leave(ticket, now, now - ticket.start if ran_s is None else ran_s):
            future = waiter.handle
            assert isinstance(future, asyncio.Future)
            if not future.done():
                future.set_result(None)

    def stop(self) -> None:
        """The server is stopping: requests waiting for a worker are refused now (503, or
        forwarded to another region), not cut off when the stop's grace runs out; so are later
        ones that would wait. Those that find a worker still run."""
        self.stopping = True
        for ticket in self.share.withdraw_all():
            future = ticket.handle
            assert isinstance(future, asyncio.Future)
            if not future.done():
                future.set_exception(_stopping())

    async def wait(self, key: str) -> Ticket:
        """After enter(key) said no: the ticket once the request has a worker (the caller must
        leave() it after), or raises FunctionOverloaded."""
        share = self.share
        if self.stopping:
            raise _stopping()
        ticket = share.queue(key)
        if ticket is None:
            raise FunctionOverloaded(
                f"{share.queue_length} requests of this function are already waiting for a "
                f"worker (it may run on {share.per_function} of the node's {share.workers} "
                "at once)",
                retry_after_s=1,
            )
        ticket.handle = future = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await future
        except TimeoutError:
            if ticket.admitted:  # admitted as the timeout fired: the worker is its own
                return ticket
            share.withdraw(ticket)
            raise FunctionOverloaded(
                f"no worker for this function within {self.queue_timeout_s * 1000:g} ms "
                f"(it may run on {share.per_function} of the node's {share.workers} at once)",
                retry_after_s=1,
            ) from None
        except BaseException:  # cancelled: the client went away
            if ticket.admitted:  # its worker goes to the next in line
                self.leave(ticket, 0.0)
            else:
                share.withdraw(ticket)
            raise
        return ticket


def _stopping() -> FunctionOverloaded:
    return FunctionOverloaded("the node is stopping: no worker for this function", retry_after_s=1)
