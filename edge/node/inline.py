"""When to run a function inline on the event loop instead of on a worker thread.

A thread hop costs more than a small function's whole run (~180 µs against ~40 µs for a C
hello), so cheap functions run inline, under a short epoch budget: if one runs over it, it is
interrupted (OverBudget) and run again on a worker thread with its full deadline, which is
safe because an instance is fresh and a function has no capabilities that could have had
effects. The event loop is then blocked for at most the budget (2-3 ticks, a few ms). Whether a
function is cheap is a moving average of its inline runs' CPU time (the caller measures thread
CPU time, so a run that a busy machine descheduled does not look slow), so one slow run (a GC
pause) does not send it to threads; a function that went to threads is probed again now and then.
A run during which the interpreter collected garbage is not counted at all: a full collection
takes tens of milliseconds on a node's heap, which says nothing about the function, and a few such
samples used to send a 40 µs function to threads for thousands of requests.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

INLINE_MAX_S = 0.001  # average inline run time above which a function runs on threads
SMOOTHING = 0.2  # weight of the newest run in the moving average
PROBE_EVERY = 200  # requests on threads between two inline probes

_collections = 0  # garbage collections started in this process, any generation


def _count_collection(phase: str, _info: dict[str, Any]) -> None:
    global _collections
    if phase == "start":
        _collections += 1


gc.callbacks.append(_count_collection)


def collections() -> int:
    """A number that changes whenever the garbage collector ran in between two reads."""
    return _collections


@dataclass
class InlineHint:
    average_s: float = 0.0
    eligible_now: bool = True
    since_probe: int = 0

    def eligible(self) -> bool:
        if self.eligible_now:
            return True
        self.since_probe += 1
        if self.since_probe >= PROBE_EVERY:
            self.since_probe = 0
            return True
        return False

    def record(self, elapsed_s: float, finished: bool, collected: bool = False) -> None:
        """`collected`: the garbage collector ran during the run, so its time is not the
        function's; the sample is dropped."""
        if collected:
            return
        if not finished and elapsed_s > INLINE_MAX_S:  # truly slow: threads
            self.eligible_now = False
            self.average_s = max(self.average_s, elapsed_s)
            return
        # Interrupted within INLINE_MAX_S: the epoch ticked just after it started, bad luck.
        self.average_s += SMOOTHING * (elapsed_s - self.average_s)
        self.eligible_now = self.average_s <= INLINE_MAX_S
