"""What the node's long-running loops share: an unexpected failure is said, and the loop goes on.

A node runs loops for as long as it serves (following the control plane, the heartbeat, the
traffic counters, the key-file watch, log shipping), each in a task nobody awaits until
shutdown. One that ended on a bug or a full disk would end silently, while the node serves on:
a node that no longer reports, follows or ships looks alive to its clients and dead, or stale,
to its operator. So each step runs under `carry_on`, which says the failure once per step and
lets the loop take its next one. Cancellation (a BaseException) still ends the loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def carry_on(say: Callable[[str], None], what: str, then: str = "") -> Iterator[None]:
    """Says an exception raised inside as `error: {what} failed: {e!r}[; {then}]` instead of
    raising it."""
    try:
        yield
    except Exception as e:  # a bug or a full disk must not end the loop for good
        say(f"error: {what} failed: {e!r}" + (f"; {then}" if then else ""))
