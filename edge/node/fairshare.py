"""Which request gets a worker thread next, when the node's functions share a pool of them.

A function flooded with slow requests (a loop running to its deadline, a busy tenant) must not
hold every worker while another function's request waits behind the flood: measured before
this, 48 requests of a Python function busy for 300 ms kept a Python hello waiting up to 626 ms,
and 64 C loops a C hello up to 854 ms. So:
- one function runs on at most `per_function` workers at once (the rest stay for the others);
- when a worker frees, the waiting function with the fewest running goes next (ties: the one
  whose oldest request has waited longest); one function's requests go in arrival order;
- at most `queue_length` requests of one function wait; the one after is refused at once
  (the caller answers 503), and so is one that waits too long (the caller's clock);
- where `exempt_fast` (the native workers), a fast function is not held to its share:
  waiting costs a request more than a fast function's whole run (a C hello's ~30 µs: at 16
  at once, capped at 4, the loop's CPU per request went from ~40 to ~90-150 µs), and its
  requests turn a worker over too quickly to keep anyone waiting long. Fast: its requests'
  run times, averaged with weight SMOOTHING for the latest, come to at most FAST_S (one run
  a few times FAST_S long, such as the first after a deploy or a job preempted on a busy
  machine, leaves it fast; one run to a 100 ms deadline makes it slow), and none of those
  under way now was let in more than STUCK_S ago (the loop learns late that a job ended).
  A function none of whose requests has ended yet is not fast: a burst of loops from a
  function just deployed (or idle for FORGET_S, when what was learned of it is dropped) runs
  on its share, where it took up to twice the workers before (a C hello beside 64 new C loops
  waited up to ~200 ms), while a fast function's first burst waits only for its first run to
  end (~30 µs). A slow function is remembered however long it is idle.
  Over their shares, fast functions take at most twice the workers in all, so a burst of
  slow requests from a function that was fast keeps others waiting for at most about two
  rounds of the workers.

Sans-I/O: counts, queues and times given by the caller. The caller keeps each ticket's future
and timeout (edge.node.admission).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field

FAST_S = 0.01  # a function whose requests' average run is longer is slow
SMOOTHING = 0.25  # the weight of the latest run in that average
STUCK_S = 0.05  # a function with a request under way longer is not fast either
FORGET_S = 60.0  # a function idle this long and not slow is dropped (it is then unknown)


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
class Ticket:
    """One request's claim on a worker: waiting until `admitted`, then running from `start`
    until leave()."""

    key: str
    order: int  # arrival order across all functions: who has waited longest
    admitted: bool = False
    start: float = 0.0
    done: bool = False
    handle: object = field(default=None, repr=False)  # the caller's (a future)


class _Function:
    __slots__ = ("last", "ran_s", "running", "since", "waiting")

    def __init__(self) -> None:
        self.running = 0
        self.since: deque[Ticket] = deque()  # running ones (and some done), oldest first
        self.waiting: deque[Ticket] = deque()
        self.ran_s = math.inf  # run time, averaged (inf: none of its runs has ended yet)
        self.last = 0.0  # when one of its runs last ended


class FairShare:
    def __init__(
        self, workers: int, per_function: int, queue_length: int, exempt_fast: bool = False
    ) -> None:
        if not 1 <= per_function <= workers:
            raise ValueError(f"per_function must be within 1..{workers}, got {per_function}")
        self.workers = workers
        self.per_function = per_function
        self.queue_length = queue_length
        self.exempt_fast = exempt_fast
        self.total = 0  # running, over all functions (fast ones may take it past `workers`)
        self.queued = 0
        self._functions: dict[str, _Function] = {}  # running, waiting, slow or recent
        self._sweep_at = FORGET_S
        self._waiting: dict[str, _Function] = {}  # those with some waiting
        self._order = itertools.count()

    @property
    def running(self) -> dict[str, int]:
        return {k: f.running for k, f in self._functions.items() if f.running}

    @property
    def waiting(self) -> dict[str, deque[Ticket]]:
        return {k: f.waiting for k, f in self._waiting.items()}

    def enter(self, key: str, now: float) -> Ticket | None:
        """A worker for `key` now, if its share allows (or it is fast): the caller must
        leave() the ticket when done. None: queue() it."""
        fn = self._functions.get(key)
        if fn is None:
            fn = self._functions[key] = _Function()
        elif fn.waiting:  # never overtakes its own function's queue
            return None
        if self._may_run(fn, now):
            return self._admit(fn, Ticket(key, 0), now)
        return None

    def _may_run(self, fn: _Function, now: float) -> bool:
        if fn.running < self.per_function and self.total < self.workers:
            return True
        return (
            self.exempt_fast
            and fn.ran_s <= FAST_S
            and self.total < 2 * self.workers
            and (not fn.since or now - fn.since[0].start < STUCK_S)
        )

    def queue(self, key: str) -> Ticket | None:
        """Waits for leave() to admit it; None when `key` already has queue_length waiting."""
        fn = self._functions.get(key)
        if fn is None:
            fn = self._functions[key] = _Function()
        elif len(fn.waiting) >= self.queue_length:
            return None
        ticket = Ticket(key, next(self._order))
        fn.waiting.append(ticket)
        self._waiting[key] = fn
        self.queued += 1
        return ticket

    def withdraw(self, ticket: Ticket) -> None:
        """A ticket that gave up (timed out, its client gone) before it was admitted."""
        fn = self._functions.get(ticket.key)
        if ticket.admitted or fn is None or ticket not in fn.waiting:
            return
        fn.waiting.remove(ticket)
        self.queued -= 1
        if not fn.waiting:
            del self._waiting[ticket.key]

    def withdraw_all(self) -> list[Ticket]:
        """Every ticket waiting, withdrawn (the node is stopping)."""
        out = [t for fn in self._waiting.values() for t in fn.waiting]
        for ticket in out:
            self.withdraw(ticket)
        return out

    def leave(self, ticket: Ticket, now: float, ran_s: float) -> list[Ticket]:
        """`ticket`'s request is done with its worker, which ran it for `ran_s`. Returns the
        tickets admitted now (usually one), each under way from `now`: each must leave() in
        turn."""
        fn = self._functions[ticket.key]
        fn.running -= 1
        self.total -= 1
        ticket.done = True
        before = 0.0 if fn.ran_s == math.inf else fn.ran_s
        fn.ran_s = before + (ran_s - before) * SMOOTHING
        fn.last = now
        since = fn.since
        while since and since[0].done:
            since.popleft()
        admitted = []
        while self._waiting:
            best = self._next(now)
            if best is None:
                break
            ticket_ = best.waiting.popleft()
            self.queued -= 1
            if not best.waiting:
                del self._waiting[ticket_.key]
            admitted.append(self._admit(best, ticket_, now))
        if now >= self._sweep_at:
            self._sweep(now)
        return admitted

    def _admit(self, fn: _Function, ticket: Ticket, now: float) -> Ticket:
        ticket.admitted, ticket.start = True, now
        fn.running += 1
        fn.since.append(ticket)
        self.total += 1
        return ticket

    def _next(self, now: float) -> _Function | None:
        best: _Function | None = None
        best_rank = (0, 0)
        for fn in self._waiting.values():
            if not self._may_run(fn, now):
                continue
            rank = (fn.running, fn.waiting[0].order)
            if best is None or rank < best_rank:
                best, best_rank = fn, rank
        return best

    def _sweep(self, now: float) -> None:
        """Drops what was learned of functions idle for FORGET_S, unless slow (so that a slow
        one stays held to its share): versions come and go, the dict must not only grow."""
        self._sweep_at = now + FORGET_S
        for key, fn in list(self._functions.items()):
            idle = not fn.running and not fn.waiting and not fn.since
            if idle and not FAST_S < fn.ran_s < math.inf and now - fn.last >= FORGET_S:
                del self._functions[key]
