"""The event loop's side of edge.node.fairshare: a request that finds no worker for its
function awaits one, up to `queue_timeout_s`, and is refused (503, FunctionOverloaded) when its
function's queue is full or the wait runs out. Requests that find a worker pay two counter
updates and nothing else (the fast path stays as it was: enter() then leave())."""

from __future__ import annotations

import asyncio

from edge.errors import FunctionOverloaded
from edge.node.fairshare import FairShare, Waiter


class Admission:
    def __init__(self, share: FairShare, queue_timeout_s: float) -> None:
        self.share = share
        self.queue_timeout_s = queue_timeout_s

    def enter(self, key: str) -> bool:
        return self.share.enter(key)

    def leave(self, key: str) -> None:
        for waiter in self.share.leave(key):
            future = waiter.handle
            assert isinstance(future, asyncio.Future)
            if not future.done():
                future.set_result(None)

    async def wait(self, key: str) -> None:
        """After enter(key) said no: returns once the request has a worker (the caller must
        leave(key) after), or raises FunctionOverloaded."""
        share = self.share
        waiter = share.queue(key)
        if waiter is None:
            raise FunctionOverloaded(
                f"{share.queue_length} requests of this function are already waiting for a "
                f"worker (it may run on {share.per_function} of the node's {share.workers} "
                "at once)",
                retry_after_s=1,
            )
        waiter.handle = future = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await future
        except TimeoutError:
            if waiter.admitted:  # admitted as the timeout fired: the worker is its own
                return
            share.withdraw(waiter)
            raise FunctionOverloaded(
                f"no worker for this function within {self.queue_timeout_s * 1000:g} ms "
                f"(it may run on {share.per_function} of the node's {share.workers} at once)",
                retry_after_s=1,
            ) from None
        except BaseException:  # cancelled: the client went away
            self._give_up(waiter)
            raise

    def _give_up(self, waiter: Waiter) -> None:
        if waiter.admitted:  # its worker goes to the next in line
            self.leave(waiter.key)
        else:
            self.share.withdraw(waiter)
