"""edge.node.admission in process: waiting for a worker on an event loop, refusals, and
requests given up while they wait (or just as they were let in)."""

from __future__ import annotations

import asyncio

import pytest

from edge.errors import FunctionOverloaded
from edge.node.admission import Admission
from edge.node.fairshare import FairShare, Ticket


def admission(workers: int = 1, per_function: int = 1, queue_length: int = 4,
              timeout_s: float = 10.0) -> Admission:  # fmt: skip
    """Its clock stands still; "f", "g" and "h" ran slow once, so each is held to its share."""
    gate = Admission(FairShare(workers, per_function, queue_length), timeout_s, lambda: 0.0)
    for key in "fgh":
        gate.leave(busy(gate, key), 1.0)
    return gate


def busy(gate: Admission, key: str) -> Ticket:
    ticket = gate.enter(key)
    assert ticket is not None
    return ticket


def test_a_waiter_runs_when_a_worker_frees() -> None:
    async def main() -> None:
        gate = admission()
        running = busy(gate, "f")
        waiting = asyncio.create_task(gate.wait("g"))
        await asyncio.sleep(0)
        assert not waiting.done() and gate.share.queued == 1
        gate.leave(running)
        assert (await waiting).admitted
        assert gate.share.running == {"g": 1}

    asyncio.run(main())


def test_a_full_queue_is_refused_at_once_with_a_retry_hint() -> None:
    async def main() -> None:
        gate = admission(queue_length=1)
        busy(gate, "f")
        first = asyncio.create_task(gate.wait("f"))
        await asyncio.sleep(0)
        with pytest.raises(FunctionOverloaded, match="1 requests of this function") as e:
            await gate.wait("f")
        assert e.value.status == 503 and e.value.retry_after_s == 1
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert gate.share.queued == 0

    asyncio.run(main())


def test_a_wait_that_runs_out_is_refused_and_leaves_the_queue() -> None:
    async def main() -> None:
        gate = admission(timeout_s=0.05)
        running = busy(gate, "f")
        with pytest.raises(FunctionOverloaded, match="within 50 ms"):
            await gate.wait("f")
        assert gate.share.queued == 0 and "f" not in gate.share.waiting
        gate.leave(running)
        assert gate.share.total == 0

    asyncio.run(main())


def test_a_request_given_up_just_after_it_was_let_in_hands_its_worker_on() -> None:
    async def main() -> None:
        gate = admission()
        running = busy(gate, "f")
        given_up = asyncio.create_task(gate.wait("g"))
        next_in_line = asyncio.create_task(gate.wait("h"))
        await asyncio.sleep(0)
        gate.leave(running)  # admits "g" (first in line) ...
        given_up.cancel()  # ... whose client goes away before it ran
        with pytest.raises(asyncio.CancelledError):
            await given_up
        await next_in_line  # the worker went on to the next
        assert gate.share.running == {"h": 1} and gate.share.queued == 0

    asyncio.run(main())


def test_a_stop_refuses_the_waiting_and_later_waits_but_lets_free_workers_run() -> None:
    async def main() -> None:
        gate = admission(workers=2)
        running = busy(gate, "f")
        waiting = asyncio.create_task(gate.wait("f"))
        await asyncio.sleep(0)
        gate.stop()
        with pytest.raises(FunctionOverloaded, match="the node is stopping"):
            await waiting
        with pytest.raises(FunctionOverloaded, match="the node is stopping"):
            await gate.wait("f")
        assert gate.share.queued == 0
        assert gate.enter("g") is not None  # a free worker still runs a request
        gate.leave(running)

    asyncio.run(main())
