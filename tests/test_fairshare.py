"""edge.node.fairshare in process: who gets a worker next, shares, fast functions, queue
bounds, giving up. Times are given (no clock, no sleeps)."""

from __future__ import annotations

import random

import pytest

from edge.node.fairshare import (
    FAST_S,
    FORGET_S,
    STUCK_S,
    FairShare,
    Ticket,
    default_per_function,
)

SLOW = 0.1  # seconds a slow request runs


def slow_function(share: FairShare, key: str, now: float = 0.0) -> None:
    """Marks `key` slow: one of its requests ran SLOW."""
    ticket = share.enter(key, now)
    assert ticket is not None
    share.leave(ticket, now, SLOW)


def entered(share: FairShare, key: str, now: float = 0.0) -> Ticket:
    ticket = share.enter(key, now)
    assert ticket is not None, key
    return ticket


def test_a_slow_function_runs_on_its_share_and_leaves_the_rest_to_others() -> None:
    share = FairShare(workers=4, per_function=3, queue_length=10)
    slow_function(share, "flood")
    slow_function(share, "other")
    held = [share.enter("flood", 0.0) for _ in range(4)]
    assert [t is not None for t in held] == [True, True, True, False]
    quiet = share.enter("quiet", 0.0)  # the fourth worker stayed free for another function
    assert quiet is not None
    assert share.total == 4 and share.running == {"flood": 3, "quiet": 1}
    assert share.enter("other", 0.0) is None  # under its share, but every worker is taken


def test_a_fast_function_is_not_held_to_its_share_where_fast_ones_are_exempt() -> None:
    share = FairShare(workers=4, per_function=2, queue_length=10, exempt_fast=True)
    share.leave(entered(share, "hello"), 0.0, 0.0001)  # one run has shown it fast
    hello = [entered(share, "hello") for _ in range(8)]  # twice the workers, no more
    assert share.enter("hello", 0.0) is None
    waiting = share.queue("hello")
    assert waiting is not None and share.total == 8
    # A worker freed: the waiter runs, over its share, as the function is still fast.
    assert share.leave(hello.pop(), 0.0005, 0.0001) == [waiting]
    for t in [*hello, waiting]:
        share.leave(t, 0.0005, 0.0001)
    assert share.total == 0 and entered(share, "hello", 0.001).admitted
    # Without the exemption (the Python workers), every function is held to its share.
    held = FairShare(workers=4, per_function=2, queue_length=10)
    assert [held.enter("hello", 0.0) is not None for _ in range(3)] == [True, True, False]


def test_runs_long_on_average_hold_a_function_to_its_share_until_it_is_fast_again() -> None:
    share = FairShare(workers=4, per_function=1, queue_length=10, exempt_fast=True)
    share.leave(entered(share, "f"), 1.0, FAST_S * 3)  # one slowish run (a cold start) ...
    assert entered(share, "f", 1.0) and entered(share, "f", 1.0)  # ... leaves it fast
    share = FairShare(workers=4, per_function=1, queue_length=10, exempt_fast=True)
    share.leave(entered(share, "f"), 1.0, SLOW)  # one run to a 100 ms deadline: slow
    first = entered(share, "f", 1.0)
    assert share.enter("f", 1.0) is None  # one at a time
    for _ in range(8):  # fast runs bring its average back down
        share.leave(first, 2.0, 0.0001)
        first = entered(share, "f", 2.0)
    assert entered(share, "f", 2.0)  # over its share again


def test_a_function_none_of_whose_runs_has_ended_is_held_to_its_share() -> None:
    """A new function's burst (loops, say) runs on its share; once its first run ends fast,
    its waiters go in at once, over the share."""
    share = FairShare(workers=4, per_function=1, queue_length=100, exempt_fast=True)
    first = entered(share, "new", 0.0)
    waiters = [share.queue("new") for _ in range(3)]
    assert share.enter("new", 0.0) is None  # not over its share, though nothing says slow
    admitted = share.leave(first, 0.001, 0.00003)
    assert admitted == waiters and share.running == {"new": 3}


def test_a_burst_from_a_fast_function_is_held_once_a_request_is_under_way_too_long() -> None:
    """The loops of a function seen fast get in over its share, but only until one of them
    has been under way for STUCK_S: the loop learns of a slow run only at its end."""
    share = FairShare(workers=4, per_function=1, queue_length=100, exempt_fast=True)
    share.leave(entered(share, "loop", 0.0), 0.0, 0.0001)  # seen fast
    assert entered(share, "loop", 0.0) and entered(share, "loop", STUCK_S / 2)  # over share
    assert share.enter("loop", STUCK_S * 1.5) is None
    assert share.enter("other", STUCK_S * 1.5) is not None  # its own share, as ever


def test_a_freed_worker_goes_to_the_function_running_fewest() -> None:
    share = FairShare(workers=2, per_function=2, queue_length=10)
    slow_function(share, "flood")
    slow_function(share, "quiet")
    running = [entered(share, "flood"), entered(share, "flood")]
    flood_waiting = [share.queue("flood") for _ in range(3)]
    quiet = share.queue("quiet")  # arrived after the flood's three
    assert quiet is not None
    admitted = share.leave(running[0], 1.0, SLOW)
    assert admitted == [quiet] and quiet.admitted and quiet.start == 1.0  # 0 running < 1
    assert not any(w is not None and w.admitted for w in flood_waiting)
    # Then the flood's, in the order they came.
    assert share.leave(quiet, 2.0, SLOW) == [flood_waiting[0]]
    assert share.leave(running[1], 3.0, SLOW) == [flood_waiting[1]]


def test_ties_go_to_who_waited_longest() -> None:
    share = FairShare(workers=1, per_function=1, queue_length=10)
    for key in "xab":
        slow_function(share, key)
    x = entered(share, "x")
    b, a = share.queue("b"), share.queue("a")
    assert b is not None and a is not None
    assert share.leave(x, 1.0, SLOW) == [b]
    assert share.leave(b, 2.0, SLOW) == [a]
    assert share.leave(a, 3.0, SLOW) == [] and share.total == 0 and not share.running


def test_a_newcomer_does_not_overtake_its_own_function_queue() -> None:
    share = FairShare(workers=3, per_function=1, queue_length=10)
    slow_function(share, "f")
    first = entered(share, "f")
    waiter = share.queue("f")
    assert share.enter("f", 0.0) is None  # capped, and someone of its own waits
    assert share.leave(first, 1.0, SLOW) == [waiter]
    assert share.enter("g", 1.0) is not None  # another function still gets a free worker


def test_a_full_queue_refuses_and_other_queues_are_their_own() -> None:
    share = FairShare(workers=4, per_function=1, queue_length=2)
    slow_function(share, "f")
    entered(share, "f")
    assert share.queue("f") is not None and share.queue("f") is not None
    assert share.queue("f") is None  # its third waiter: refused
    assert share.queue("g") is not None
    assert share.queued == 3


def test_withdrawn_tickets_are_gone_and_their_turn_passes() -> None:
    share = FairShare(workers=1, per_function=1, queue_length=10)
    slow_function(share, "f")
    running = entered(share, "f")
    first, second = share.queue("f"), share.queue("g")
    assert first is not None and second is not None
    share.withdraw(first)
    share.withdraw(first)  # twice: no effect
    assert share.queued == 1 and "f" not in share.waiting
    assert share.leave(running, 1.0, SLOW) == [second]
    share.withdraw(second)  # already admitted: the caller leaves instead
    assert share.running == {"g": 1}


def test_functions_idle_for_a_while_are_forgotten_unless_slow() -> None:
    share = FairShare(workers=2, per_function=1, queue_length=10, exempt_fast=True)
    share.leave(entered(share, "fast", 1.0), 1.0, 0.0001)
    slow_function(share, "slow", 1.0)
    assert share.queue("never-ran") is not None
    share.withdraw_all()
    half = FORGET_S / 2
    share.leave(entered(share, "other", half), half, 0.0001)
    assert set(share._functions) == {"fast", "slow", "never-ran", "other"}
    # Remembered: after a pause, a burst goes in over the share at once.
    burst = [entered(share, "fast", half), entered(share, "fast", half)]
    for t in burst:
        share.leave(t, half, 0.0001)
    share.leave(entered(share, "other", 2 * FORGET_S), 2 * FORGET_S, 0.0001)
    # Idle FORGET_S: dropped, but for the slow one (its share still holds) and the one whose
    # run just ended; one that never ran is dropped too.
    assert set(share._functions) == {"slow", "other"}
    held = entered(share, "fast", 2 * FORGET_S)  # unknown again: held to its share
    assert share.enter("fast", 2 * FORGET_S) is None and held.admitted
    for _ in range(8):  # fast runs bring the slow one's average down ...
        share.leave(entered(share, "slow", 3 * FORGET_S), 3 * FORGET_S, 0.0001)
    share.leave(entered(share, "other", 5 * FORGET_S), 5 * FORGET_S, 0.0001)
    assert set(share._functions) == {"fast", "other"}  # ... and then it is forgotten too


def test_the_default_share_is_twice_the_cores_within_three_quarters_of_the_workers() -> None:
    assert default_per_function(workers=16, cores=2) == 4
    assert default_per_function(workers=16, cores=8) == 12  # a quarter kept for the others
    assert [default_per_function(n, cores=64) for n in (1, 2, 3, 4, 8)] == [1, 1, 2, 3, 6]
    assert default_per_function(workers=1, cores=1) == 1


def test_per_function_must_fit_the_workers() -> None:
    with pytest.raises(ValueError, match=r"within 1\.\.4, got 5"):
        FairShare(workers=4, per_function=5, queue_length=1)
    with pytest.raises(ValueError, match="got 0"):
        FairShare(workers=4, per_function=0, queue_length=1)


@pytest.mark.parametrize("seed", range(30))
def test_random_traffic_keeps_the_rules(seed: int) -> None:
    """Random arrivals, departures (fast and slow runs), give-ups and time: never more than
    twice the workers running, a slow function never past its share, every count matches, and
    nobody waits while a worker is free for them, now or later."""
    rng = random.Random(seed)
    workers = rng.randint(1, 6)
    exempt = rng.random() < 0.5
    share = FairShare(workers, rng.randint(1, workers), rng.randint(1, 4), exempt)
    keys = ["a", "b", "c", "d"][: rng.randint(1, 4)]
    running: list[Ticket] = []
    waiting: list[Ticket] = []
    now = 0.0
    for _ in range(500):
        now += rng.choice([0.0, 0.0001, 0.005, 0.5])
        op = rng.random()
        if op < 0.45:
            key = rng.choice(keys)
            ticket = share.enter(key, now)
            if ticket is not None:
                running.append(ticket)
            else:
                waiter = share.queue(key)
                if waiter is not None:
                    waiting.append(waiter)
                else:
                    assert len(share.waiting[key]) == share.queue_length
        elif op < 0.85 and running:
            ticket = running.pop(rng.randrange(len(running)))
            for admitted in share.leave(ticket, now, rng.choice([0.0001, FAST_S / 2, SLOW])):
                waiting.remove(admitted)
                running.append(admitted)
        elif waiting:
            share.withdraw(waiting.pop(rng.randrange(len(waiting))))
        assert share.total == len(running) <= (2 if exempt else 1) * workers
        counts: dict[str, int] = {}
        for t in running:
            counts[t.key] = counts.get(t.key, 0) + 1
        assert share.running == counts
        assert share.queued == len(waiting) == sum(len(q) for q in share.waiting.values())
        for key, line in share.waiting.items():
            assert line, "an empty queue is dropped"
            assert list(line) == sorted(line, key=lambda t: t.order)
            # Nobody waits while a worker is free for them within their share (leave() hands
            # them out at once; being fast only lets a function in sooner, at the next leave).
            assert share.total >= workers or counts.get(key, 0) >= share.per_function
            # Only a leave() admits waiters, so time alone must never make one admissible
            # (the STUCK_S rule only ever shuts a fast function out).
            for later in (now, now + STUCK_S, now + FORGET_S):
                assert not share._may_run(share._functions[key], later), (key, later)
