"""NodeWatch, what `GET /v1/status?revision=R&wait_s=S` waits on, in process with a frozen
clock: which nodes are still worth waiting for, and that a refusal ends the wait."""

from __future__ import annotations

import asyncio

from edge.control.feeds import NodeWatch
from edge.control.records import Node
from tests.control.conftest import FakeClock

BAD_KEY = "refused revision 4: snapshot signature does not verify"


def test_a_node_that_refused_the_revision_or_a_later_one_is_not_waited_for() -> None:
    clock = FakeClock()
    # From the database at start: a node that refused 4 before the control plane restarted.
    watch = NodeWatch([Node("old", "eu", 3, clock(), True, None, BAD_KEY)], 60.0, clock)
    assert (watch.laggards(4), watch.waited_for(4)) == (["old"], [])
    assert watch.waited_for(5) == ["old"]  # refusing 4 says nothing about 5

    async def scenario() -> None:
        await watch.reported("a", 3)
        await watch.reported("b", 3, "refused revision 3: tampered")  # an older refusal
        await watch.reported("c", 3, "refused revision ?: no edge-revision header")
        await watch.reported("d", 4)
        assert watch.laggards(4) == ["a", "b", "c", "old"]
        assert watch.waited_for(4) == ["a", "b", "c"]
        await watch.reported("a", 3, "refused revision 5: blob sha256 mismatch")
        await watch.reported("b", 3, BAD_KEY)
        assert watch.waited_for(4) == ["c"]
        # A clean report clears the refusal: the node may apply the next snapshot.
        await watch.reported("b", 3)
        assert watch.waited_for(4) == ["b", "c"]

    asyncio.run(scenario())
    clock.advance(61)  # all stale: nobody to wait for
    assert watch.waited_for(4) == []


def test_the_refusal_of_the_last_laggard_ends_the_wait() -> None:
    clock = FakeClock()
    watch = NodeWatch([], 60.0, clock)

    async def scenario() -> tuple[bool, bool]:
        await watch.reported("good", 1)
        await watch.reported("bad", 1)
        waiting = asyncio.create_task(watch.wait_applied(2, 60))  # False: not woken
        await asyncio.sleep(0)
        await watch.reported("good", 2)
        await asyncio.sleep(0)
        still_waiting = not waiting.done()  # "bad" may still apply it
        await watch.reported("bad", 1, "refused revision 2: snapshot signature does not verify")
        return still_waiting, await waiting

    assert asyncio.run(scenario()) == (True, True)
