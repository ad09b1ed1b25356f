from edge.node.inline import INLINE_MAX_S, PROBE_EVERY, InlineHint


def test_cheap_function_stays_inline_through_one_slow_run() -> None:
    hint = InlineHint()
    for _ in range(20):
        hint.record(0.0001, finished=True)
    hint.record(0.003, finished=True)  # a GC pause
    assert hint.eligible()


def test_over_budget_goes_to_threads_and_is_probed_again() -> None:
    hint = InlineHint()
    hint.record(0.004, finished=False)
    decisions = [hint.eligible() for _ in range(PROBE_EVERY)]
    assert decisions.count(True) == 1 and decisions[-1] is True


def test_consistently_slow_function_leaves_inline() -> None:
    hint = InlineHint()
    for _ in range(30):
        hint.record(INLINE_MAX_S * 3, finished=True)
    assert not hint.eligible_now
