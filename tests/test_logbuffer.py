"""The node's bounded log buffer: nothing is dropped without being counted (in process)."""

from __future__ import annotations

import threading

import pytest

from edge.node.logbuffer import Batch, LogBuffer
from edge.sandbox.host import LogLine


def line(fn: str, n: int) -> LogLine:
    return LogLine(fn, f"req-{n}", "info", f"line {n}", "log", 1000.0 + n)


def test_a_full_buffer_refuses_and_counts_per_function() -> None:
    buf = LogBuffer(3)
    assert all(buf.offer(line("t/a", i)) for i in range(3))
    assert not buf.offer(line("t/a", 3))
    assert not buf.offer(line("t/b", 4))
    assert not buf.offer(line("t/a", 5))
    batch = buf.take(10)
    assert [x.message for x in batch.lines] == ["line 0", "line 1", "line 2"]
    assert batch.dropped == {"t/a": 2, "t/b": 1}
    assert buf.dropped_total == 3
    records = batch.drop_records(2000.0)
    assert [(r.function, r.level, r.source, r.message) for r in records] == [
        ("t/a", "warn", "platform", "2 log lines dropped (the node's log buffer was full)"),
        ("t/b", "warn", "platform", "1 log line dropped (the node's log buffer was full)"),
    ]
    # The counts went out with that batch: the next one starts from zero.
    assert not buf.take(10)
    assert buf.offer(line("t/a", 6))


def test_an_undelivered_batch_goes_back_in_order_and_overflow_is_counted() -> None:
    buf = LogBuffer(4)
    for i in range(4):
        buf.offer(line("t/a", i))
    buf.offer(line("t/a", 99))  # dropped
    first = buf.take(3)  # lines 0-2 and the count of line 99 go out... and fail
    buf.offer(line("t/b", 4))
    buf.offer(line("t/b", 5))  # three lines held: room for one of the three put back
    buf.put_back(first)
    again = buf.take(10)
    assert [x.message for x in again.lines] == ["line 0", "line 3", "line 4", "line 5"]
    assert again.dropped == {"t/a": 3}  # line 99, and lines 1 and 2 that did not fit
    assert buf.dropped_total == 3

    buf2 = LogBuffer(10)
    for i in range(3):
        buf2.offer(line("t/a", i))
    b = buf2.take(2)
    buf2.offer(line("t/a", 3))
    buf2.put_back(Batch(b.lines, {"t/c": 7}))
    out = buf2.take(10)
    assert [x.message for x in out.lines] == ["line 0", "line 1", "line 2", "line 3"]
    assert out.dropped == {"t/c": 7}
    buf2.drop([line("t/a", 8)])
    assert buf2.take(10).dropped == {"t/a": 1}


def test_lines_from_many_threads_are_kept_or_counted_exactly() -> None:
    buf = LogBuffer(500)
    kept: list[int] = []

    def log(k: int) -> None:
        kept.append(sum(buf.offer(line(f"t/f{k}", i)) for i in range(300)))

    threads = [threading.Thread(target=log, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batch = buf.take(10_000)
    assert len(batch.lines) == sum(kept) == 500
    assert sum(batch.dropped.values()) == buf.dropped_total == 4 * 300 - 500


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LogBuffer(0)


def test_lines_over_the_per_request_cap_are_reported_when_the_request_ends() -> None:
    from edge.sandbox.host import MAX_LOG_LINES_PER_REQUEST, Invocation

    got: list[LogLine] = []
    inv = Invocation("t/a", "req-1", {}, got.append, version="2", trace_id="ab" * 16)
    for i in range(MAX_LOG_LINES_PER_REQUEST + 5):
        inv.log("info", f"line {i}", "log")
    assert len(got) == MAX_LOG_LINES_PER_REQUEST
    inv.report_dropped()
    inv.report_dropped()  # said once
    last = got[-1]
    assert len(got) == MAX_LOG_LINES_PER_REQUEST + 1
    assert (last.level, last.source, last.request_id, last.version, last.trace_id) == (
        "warn", "platform", "req-1", "2", "ab" * 16)  # fmt: skip
    assert last.message.startswith("5 log lines dropped")
