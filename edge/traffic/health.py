"""Node health as a small state machine fed by check results and a clock; no I/O here.

Rules (the table below is the whole machine):
- A node starts UNKNOWN and is served while unknown: before the first check completes we have
  no evidence against it, and a fresh DNS server must not black-hole every region.
- The first result decides at once: pass -> UP, failure -> DOWN.
- UP goes DOWN after `fall` consecutive failures; a pass resets the failure count.
- DOWN comes UP after `rise` consecutive passes; a failure resets the pass count.
Each entry says which streak counter the event extends, and the state to move to once that
streak reaches the named threshold (None: move at once).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal


class NodeState(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


class CheckEvent(enum.Enum):
    OK = "ok"
    FAILED = "failed"


Threshold = Literal["rise", "fall"] | None


@dataclass(frozen=True)
class Transition:
    target: NodeState
    threshold: Threshold


TRANSITIONS: dict[tuple[NodeState, CheckEvent], Transition] = {
    (NodeState.UNKNOWN, CheckEvent.OK): Transition(NodeState.UP, None),
    (NodeState.UNKNOWN, CheckEvent.FAILED): Transition(NodeState.DOWN, None),
    (NodeState.UP, CheckEvent.OK): Transition(NodeState.UP, None),
    (NodeState.UP, CheckEvent.FAILED): Transition(NodeState.DOWN, "fall"),
    (NodeState.DOWN, CheckEvent.OK): Transition(NodeState.UP, "rise"),
    (NodeState.DOWN, CheckEvent.FAILED): Transition(NodeState.DOWN, None),
}


class NodeHealth:
    def __init__(self, *, rise: int, fall: int, interval_s: float) -> None:
        if rise < 1 or fall < 1 or interval_s <= 0:
            raise ValueError("rise and fall must be >= 1 and interval_s > 0")
        self.rise = rise
        self.fall = fall
        self.interval_s = interval_s
        self.state = NodeState.UNKNOWN
        self.ok_streak = 0
        self.fail_streak = 0
        self.last_check_s: float | None = None
        self.changed_s: float | None = None
        self.changes: dict[NodeState, int] = {}  # by the state entered, for metrics

    @property
    def serving(self) -> bool:
        return self.state is not NodeState.DOWN

    def due(self, now: float) -> bool:
        return self.last_check_s is None or now >= self.last_check_s + self.interval_s

    def check_ok(self, now: float) -> NodeState:
        return self._event(CheckEvent.OK, now)

    def check_failed(self, now: float) -> NodeState:
        return self._event(CheckEvent.FAILED, now)

    def _event(self, event: CheckEvent, now: float) -> NodeState:
        self.last_check_s = now
        if event is CheckEvent.OK:
            self.ok_streak, self.fail_streak = self.ok_streak + 1, 0
        else:
            self.ok_streak, self.fail_streak = 0, self.fail_streak + 1
        t = TRANSITIONS[(self.state, event)]
        streak = {"rise": self.ok_streak, "fall": self.fail_streak, None: 0}[t.threshold]
        limit = {"rise": self.rise, "fall": self.fall, None: 0}[t.threshold]
        if t.target is not self.state and streak >= limit:
            self.state = t.target
            self.changed_s = now
            self.changes[t.target] = self.changes.get(t.target, 0) + 1
        return self.state


def region_healthy(nodes: list[NodeHealth]) -> bool:
    """A region is healthy while any of its nodes is served."""
    return any(n.serving for n in nodes)
