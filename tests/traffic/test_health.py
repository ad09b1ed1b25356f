import itertools

import pytest

from edge.traffic.health import TRANSITIONS, CheckEvent, NodeHealth, NodeState, region_healthy


def test_table_covers_every_state_and_event() -> None:
    assert set(TRANSITIONS) == set(itertools.product(NodeState, CheckEvent))


def drive(node: NodeHealth, state: NodeState) -> None:
    """Put a fresh node into `state` through events only."""
    if state is NodeState.UP:
        node.check_ok(0.0)
    elif state is NodeState.DOWN:
        node.check_failed(0.0)


@pytest.mark.parametrize("rise", [1, 2, 3])
@pytest.mark.parametrize("fall", [1, 2, 3])
@pytest.mark.parametrize("start", list(NodeState))
@pytest.mark.parametrize("event", list(CheckEvent))
def test_every_transition_needs_its_threshold(
    rise: int, fall: int, start: NodeState, event: CheckEvent
) -> None:
    node = NodeHealth(rise=rise, fall=fall, interval_s=1.0)
    drive(node, start)
    assert node.state is start
    expected = TRANSITIONS[(start, event)]
    needed = {"rise": rise, "fall": fall, None: 1}[expected.threshold]
    for i in range(1, needed + 1):
        now = float(i)
        node.check_ok(now) if event is CheckEvent.OK else node.check_failed(now)
        assert node.state is (expected.target if i >= needed else start)
    assert node.serving == (node.state is not NodeState.DOWN)


def test_streak_resets_on_the_opposite_result() -> None:
    node = NodeHealth(rise=2, fall=3, interval_s=1.0)
    node.check_ok(0)
    for now in range(1, 20):
        node.check_failed(now)
        node.check_failed(now)
        node.check_ok(now)  # never three in a row
    assert node.state is NodeState.UP


def test_unknown_serves_and_due_follows_the_interval() -> None:
    node = NodeHealth(rise=2, fall=2, interval_s=5.0)
    assert node.serving and node.due(0.0)
    node.check_ok(10.0)
    assert not node.due(14.9) and node.due(15.0)


def test_region_is_healthy_while_any_node_serves() -> None:
    a, b = NodeHealth(rise=1, fall=1, interval_s=1), NodeHealth(rise=1, fall=1, interval_s=1)
    a.check_failed(0)
    assert region_healthy([a, b])
    b.check_failed(0)
    assert not region_healthy([a, b])


def test_bad_thresholds_are_rejected() -> None:
    with pytest.raises(ValueError):
        NodeHealth(rise=0, fall=1, interval_s=1)
