"""edge.node.fairshare in process: who gets a worker next, caps, queue bounds, giving up."""

from __future__ import annotations

import random

import pytest

from edge.node.fairshare import FairShare, Waiter, default_per_function


def test_a_function_runs_on_its_share_and_leaves_the_rest_to_others() -> None:
    share = FairShare(workers=4, per_function=3, queue_length=10)
    assert [share.enter("flood") for _ in range(4)] == [True, True, True, False]
    assert share.enter("quiet")  # the fourth worker stayed free for another function
    assert not share.enter("other")  # all four busy now
    assert share.total == 4 and share.running == {"flood": 3, "quiet": 1}


def test_a_freed_worker_goes_to_the_function_running_fewest() -> None:
    share = FairShare(workers=2, per_function=2, queue_length=10)
    assert share.enter("flood") and share.enter("flood")
    flood_waiters = [share.queue("flood") for _ in range(3)]
    quiet = share.queue("quiet")  # arrived after the flood's three
    assert quiet is not None
    admitted = share.leave("flood")
    assert admitted == [quiet] and quiet.admitted  # 0 running beats the flood's 1
    assert not any(w is not None and w.admitted for w in flood_waiters)
    # Then the flood's, in the order they came.
    assert share.leave("quiet") == [flood_waiters[0]]
    assert share.leave("flood") == [flood_waiters[1]]


def test_ties_go_to_who_waited_longest() -> None:
    share = FairShare(workers=1, per_function=1, queue_length=10)
    assert share.enter("x")
    b, a = share.queue("b"), share.queue("a")
    assert share.leave("x") == [b]
    assert share.leave("b") == [a]
    assert share.leave("a") == [] and share.total == 0 and not share.running


def test_a_newcomer_does_not_overtake_its_own_function_queue() -> None:
    share = FairShare(workers=3, per_function=1, queue_length=10)
    assert share.enter("f")
    waiter = share.queue("f")
    assert not share.enter("f")  # capped, and someone of its own waits
    assert share.leave("f") == [waiter]
    assert share.enter("g")  # another function still gets a free worker at once


def test_a_full_queue_refuses_and_a_capped_function_waits_with_workers_free() -> None:
    share = FairShare(workers=4, per_function=1, queue_length=2)
    assert share.enter("f")
    assert share.queue("f") is not None and share.queue("f") is not None
    assert share.queue("f") is None  # its third waiter: refused
    assert share.queue("g") is not None  # another function's queue is its own
    assert share.queued == 3


def test_withdrawn_waiters_are_gone_and_their_turn_passes() -> None:
    share = FairShare(workers=1, per_function=1, queue_length=10)
    assert share.enter("f")
    first, second = share.queue("f"), share.queue("g")
    assert first is not None and second is not None
    share.withdraw(first)
    share.withdraw(first)  # twice: no effect
    assert share.queued == 1 and "f" not in share.waiting
    assert share.leave("f") == [second]
    share.withdraw(second)  # already admitted: the caller leaves instead
    assert share.running == {"g": 1}


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


@pytest.mark.parametrize("seed", range(20))
def test_random_traffic_keeps_the_rules(seed: int) -> None:
    """Random arrivals, departures and give-ups: never more than the workers or a function's
    share running, every count matches, and nobody waits while their turn is free."""
    rng = random.Random(seed)
    workers = rng.randint(1, 6)
    share = FairShare(workers, rng.randint(1, workers), rng.randint(1, 4))
    keys = ["a", "b", "c", "d"][: rng.randint(1, 4)]
    running: list[str] = []  # one entry per request holding a worker
    waiting: list[Waiter] = []
    for _ in range(400):
        op = rng.random()
        if op < 0.45:
            key = rng.choice(keys)
            if share.enter(key):
                running.append(key)
            else:
                waiter = share.queue(key)
                if waiter is not None:
                    waiting.append(waiter)
                else:
                    assert len(share.waiting[key]) == share.queue_length
        elif op < 0.85 and running:
            key = running.pop(rng.randrange(len(running)))
            for waiter in share.leave(key):
                waiting.remove(waiter)
                running.append(waiter.key)
        elif waiting:
            waiter = waiting.pop(rng.randrange(len(waiting)))
            share.withdraw(waiter)
        assert share.total == len(running) <= workers
        counts = {k: running.count(k) for k in set(running)}
        assert share.running == counts
        assert all(n <= share.per_function for n in counts.values())
        assert share.queued == len(waiting) == sum(len(line) for line in share.waiting.values())
        for key, line in share.waiting.items():
            assert line, "an empty queue is dropped"
            # Nobody waits while a worker is free for them (leave() hands them out at once).
            assert share.total == workers or counts.get(key, 0) >= share.per_function
