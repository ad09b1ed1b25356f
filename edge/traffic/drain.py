"""Operator drain of a region: a linear ramp of its answer share, as a table-driven machine.

The share is the fraction of its clients a region keeps (steering sends the rest onwards).
Rules (the table below is the whole machine):
- `start(now, over_s)` ramps the share from where it is now down to 0 over `over_s`;
  `undrain(now, over_s)` ramps it back up to 1. Ramping from the current share means reversing
  mid-ramp never jumps, so resolvers do not see a burst of moved clients.
- A ramp that reaches its end fires RAMP_DONE: DRAINING -> DRAINED, UNDRAINING -> ACTIVE.
  Time only moves when the caller passes `now`, so ramps are checked with a fake clock.
- Draining a drained region, or undraining an active one, changes nothing.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass


class DrainState(enum.Enum):
    ACTIVE = "active"
    DRAINING = "draining"
    DRAINED = "drained"
    UNDRAINING = "undraining"


class DrainEvent(enum.Enum):
    START = "start"
    UNDRAIN = "undrain"
    RAMP_DONE = "ramp_done"


# (state, event) -> (next state, the share the new ramp heads to; None: no new ramp)
TRANSITIONS: dict[tuple[DrainState, DrainEvent], tuple[DrainState, float | None]] = {
    (DrainState.ACTIVE, DrainEvent.START): (DrainState.DRAINING, 0.0),
    (DrainState.ACTIVE, DrainEvent.UNDRAIN): (DrainState.ACTIVE, None),
    (DrainState.ACTIVE, DrainEvent.RAMP_DONE): (DrainState.ACTIVE, None),
    (DrainState.DRAINING, DrainEvent.START): (DrainState.DRAINING, 0.0),
    (DrainState.DRAINING, DrainEvent.UNDRAIN): (DrainState.UNDRAINING, 1.0),
    (DrainState.DRAINING, DrainEvent.RAMP_DONE): (DrainState.DRAINED, None),
    (DrainState.DRAINED, DrainEvent.START): (DrainState.DRAINED, None),
    (DrainState.DRAINED, DrainEvent.UNDRAIN): (DrainState.UNDRAINING, 1.0),
    (DrainState.DRAINED, DrainEvent.RAMP_DONE): (DrainState.DRAINED, None),
    (DrainState.UNDRAINING, DrainEvent.START): (DrainState.DRAINING, 0.0),
    (DrainState.UNDRAINING, DrainEvent.UNDRAIN): (DrainState.UNDRAINING, 1.0),
    (DrainState.UNDRAINING, DrainEvent.RAMP_DONE): (DrainState.ACTIVE, None),
}

RESTING_SHARE = {DrainState.ACTIVE: 1.0, DrainState.DRAINED: 0.0}


@dataclass(frozen=True)
class Ramp:
    start_s: float
    over_s: float
    from_share: float
    to_share: float

    def share(self, now: float) -> float:
        if self.over_s <= 0 or now >= self.start_s + self.over_s:
            return self.to_share
        progress = max(0.0, (now - self.start_s) / self.over_s)
        return self.from_share + (self.to_share - self.from_share) * progress

    def done(self, now: float) -> bool:
        return self.over_s <= 0 or now >= self.start_s + self.over_s


class Drain:
    def __init__(self) -> None:
        self._state = DrainState.ACTIVE
        self._ramp: Ramp | None = None
        # Told of every start/undrain (TrafficState counts them to invalidate answers).
        self.on_change: Callable[[], None] | None = None

    def __getstate__(self) -> dict[str, object]:
        # Sent to worker processes: the callback belongs to this process's TrafficState.
        return {**self.__dict__, "on_change": None}

    def settles_at(self) -> float:
        """The time from which `share` stays put until the next event (-inf: already)."""
        if self._ramp is None or self._ramp.over_s <= 0:
            return -math.inf
        return self._ramp.start_s + self._ramp.over_s

    def state(self, now: float) -> DrainState:
        self._advance(now)
        return self._state

    def share(self, now: float) -> float:
        self._advance(now)
        if self._ramp is not None:
            return self._ramp.share(now)
        return RESTING_SHARE[self._state]

    def start(self, now: float, over_s: float) -> DrainState:
        return self._event(DrainEvent.START, now, over_s)

    def undrain(self, now: float, over_s: float = 0.0) -> DrainState:
        return self._event(DrainEvent.UNDRAIN, now, over_s)

    def _advance(self, now: float) -> None:
        if self._ramp is not None and self._ramp.done(now):
            self._ramp = None
            self._state = TRANSITIONS[(self._state, DrainEvent.RAMP_DONE)][0]

    def _event(self, event: DrainEvent, now: float, over_s: float) -> DrainState:
        if over_s < 0:
            raise ValueError(f"over_s must be >= 0, got {over_s}")
        current = self.share(now)
        self._state, target = TRANSITIONS[(self._state, event)]
        if target is not None:
            self._ramp = Ramp(now, over_s, current, target)
        self._advance(now)
        if self.on_change is not None:
            self.on_change()
        return self._state
