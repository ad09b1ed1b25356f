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


def test_runs_disturbed_by_garbage_collection_are_not_counted() -> None:
    hint = InlineHint()
    for _ in range(20):
        hint.record(0.00004, finished=True)
    # A full collection of a node's heap took 40-50 ms inside inline runs (measured); those
    # samples would have sent a 40 µs function to threads for thousands of requests.
    hint.record(0.05, finished=True, collected=True)
    hint.record(0.05, finished=False, collected=True)
    assert hint.eligible_now
    assert hint.average_s < INLINE_MAX_S


def test_collections_counter_moves_when_the_collector_runs() -> None:
    import gc

    from edge.node.inline import collections

    before = collections()
    gc.collect()
    assert collections() > before


def test_settling_the_heap_freezes_what_start_up_allocated() -> None:
    import gc

    from edge.node.main import settle_heap

    try:
        settle_heap()
        assert gc.get_freeze_count() > 0  # out of the collector's sight from here on
    finally:
        gc.unfreeze()
