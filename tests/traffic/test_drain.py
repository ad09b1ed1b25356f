import itertools

import pytest

from edge.traffic.drain import TRANSITIONS, Drain, DrainEvent, DrainState


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def test_table_covers_every_state_and_event() -> None:
    assert set(TRANSITIONS) == set(itertools.product(DrainState, DrainEvent))


def test_linear_ramp_down_then_drained() -> None:
    clock, drain = FakeClock(), Drain()
    assert drain.share(clock.now) == 1.0
    drain.start(clock.now, over_s=10)
    assert drain.state(clock.now) is DrainState.DRAINING
    for step in range(1, 10):
        assert drain.share(clock.advance(1)) == pytest.approx(1 - step / 10)
        assert drain.state(clock.now) is DrainState.DRAINING
    assert drain.share(clock.advance(1)) == 0.0
    assert drain.state(clock.now) is DrainState.DRAINED


def reach(drain: Drain, clock: FakeClock, state: DrainState) -> None:
    if state is DrainState.DRAINING:
        drain.start(clock.now, 10)
    elif state is DrainState.DRAINED:
        drain.start(clock.now, 0)
    elif state is DrainState.UNDRAINING:
        drain.start(clock.now, 0)
        drain.undrain(clock.now, 10)
    assert drain.state(clock.now) is state


@pytest.mark.parametrize("start", list(DrainState))
@pytest.mark.parametrize("event", list(DrainEvent))
def test_every_transition(start: DrainState, event: DrainEvent) -> None:
    clock, drain = FakeClock(), Drain()
    reach(drain, clock, start)
    target, ramp_to = TRANSITIONS[(start, event)]
    if event is DrainEvent.RAMP_DONE:
        clock.advance(1000)  # any ramp in progress ends
        assert drain.state(clock.now) is target
        return
    before = drain.share(clock.now)
    clock.advance(1)
    before = drain.share(clock.now)
    if event is DrainEvent.START:
        drain.start(clock.now, 10)
    else:
        drain.undrain(clock.now, 10)
    assert drain.state(clock.now) is target
    # No jumps: a new ramp starts from the share in effect.
    assert drain.share(clock.now) == pytest.approx(before)
    if ramp_to is not None:
        clock.advance(10)
        assert drain.share(clock.now) == ramp_to


def test_reversing_mid_ramp_continues_from_the_current_share() -> None:
    clock, drain = FakeClock(), Drain()
    drain.start(clock.now, 10)
    clock.advance(4)
    drain.undrain(clock.now, 6)
    assert drain.share(clock.now) == pytest.approx(0.6)
    assert drain.share(clock.advance(3)) == pytest.approx(0.8)
    assert drain.share(clock.advance(3)) == 1.0
    assert drain.state(clock.now) is DrainState.ACTIVE


def test_instant_drain_and_undrain() -> None:
    drain = Drain()
    assert drain.start(0.0, 0) is DrainState.DRAINED and drain.share(0.0) == 0.0
    assert drain.undrain(0.0) is DrainState.ACTIVE and drain.share(0.0) == 1.0


def test_negative_duration_is_rejected() -> None:
    with pytest.raises(ValueError):
        Drain().start(0.0, -1)
