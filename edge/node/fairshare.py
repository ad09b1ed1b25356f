"""Which request gets a worker thread next, when the node's functions share a pool of them.

A function flooded with slow requests (a loop running to its deadline, a busy tenant) must not
hold every worker while another function's request waits behind the flood: measured before
this, 48 requests of a Python function busy for 300 ms kept a Python hello waiting up to 626 ms,
and 64 C loops a C hello up to 854 ms. So:
- one function runs on at most `per_function` workers at once (the rest stay for the others);
- when a worker frees, the waiting function with the fewest running goes next (ties: the one
  whose oldest request has waited longest); one function's requests go in arrival order;
- at most `queue_length` requests of one function wait; the one after is refused at once
  (the caller answers 503), and so is one that waits too long (the caller's clock).

Sans-I/O: counts and queues only. The caller keeps each Waiter's future and timeout
(edge.node.admission).
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field


def default_per_function(workers: int, cores: int) -> int:
    """Workers one function may hold at once unless configured: twice the cores (its work is
    all CPU: more threads than cores only take CPU from other functions, and push its own
    requests past their wall-clock deadlines), at most all but a quarter of the workers, at
    least one. Measured on 2 cores, 16 workers (a Python hello during 48 requests of a
    function busy for 300 ms; a C hello during 64 C loops): a share of 12 left the hellos a
    median of 52-63 / 22-62 ms, at most 248 / 876 ms; a share of 4, 14-16 / 10-11 ms, at most
    32 / 74 ms; before any share, 46 / 24 ms, at most 626 / 854 ms."""
    return max(1, min(2 * cores, workers - max(1, workers // 4)))


@dataclass(eq=False, slots=True)
class Waiter:
    """One request waiting for a worker. `admitted` turns True when leave() gives it one."""

    key: str
    order: int  # arrival order across all functions: who has waited longest
    admitted: bool = False
    handle: object = field(default=None, repr=False)  # the caller's (a future)


class FairShare:
    def __init__(self, workers: int, per_function: int, queue_length: int) -> None:
        if not 1 <= per_function <= workers:
            raise ValueError(f"per_function must be within 1..{workers}, got {per_function}")
        self.workers = workers
        self.per_function = per_function
        self.queue_length = queue_length
        self.running: dict[str, int] = {}  # only functions with some running
        self.total = 0
        self.waiting: dict[str, deque[Waiter]] = {}  # only functions with some waiting
        self.queued = 0
        self._order = itertools.count()

    def enter(self, key: str) -> bool:
        """A worker for `key` now, if one is free and its share allows: the caller must
        leave(key) when done. False: queue() it."""
        running = self.running.get(key, 0)
        # A function with requests waiting cannot be below its cap with a worker free (leave
        # hands those out at once), so a newcomer never overtakes its own function's queue.
        if self.total < self.workers and running < self.per_function and key not in self.waiting:
            self.running[key] = running + 1
            self.total += 1
            return True
        return False

    def queue(self, key: str) -> Waiter | None:
        """Waits for leave() to admit it; None when `key` already has queue_length waiting."""
        line = self.waiting.get(key)
        if line is None:
            line = self.waiting[key] = deque()
        elif len(line) >= self.queue_length:
            return None
        waiter = Waiter(key, next(self._order))
        line.append(waiter)
        self.queued += 1
        return waiter

    def withdraw(self, waiter: Waiter) -> None:
        """A waiter that gave up (timed out, its client gone) before it was admitted."""
        line = self.waiting.get(waiter.key)
        if waiter.admitted or line is None or waiter not in line:
            return
        line.remove(waiter)
        self.queued -= 1
        if not line:
            del self.waiting[waiter.key]

    def leave(self, key: str) -> list[Waiter]:
        """`key` is done with a worker. Returns the waiters admitted now (usually one), each
        counted as running: each must leave() in turn."""
        running = self.running[key] - 1
        if running:
            self.running[key] = running
        else:
            del self.running[key]
        self.total -= 1
        admitted = []
        while self.waiting and self.total < self.workers:
            waiter = self._next()
            if waiter is None:
                break
            admitted.append(waiter)
        return admitted

    def _next(self) -> Waiter | None:
        best: deque[Waiter] | None = None
        best_rank = (0, 0)
        for key, line in self.waiting.items():
            running = self.running.get(key, 0)
            if running >= self.per_function:
                continue
            rank = (running, line[0].order)
            if best is None or rank < best_rank:
                best, best_rank = line, rank
        if best is None:
            return None
        waiter = best.popleft()
        waiter.admitted = True
        self.queued -= 1
        if not best:
            del self.waiting[waiter.key]
        self.running[waiter.key] = self.running.get(waiter.key, 0) + 1
        self.total += 1
        return waiter
