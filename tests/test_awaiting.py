"""The JS SDK's marks around its handler's Promise, kept by an invocation in process
(edge.sandbox.awaiting): they set and clear the wait, log nothing, and withdraw a report as any
host call does; a line that only looks like one is logged as written."""

from __future__ import annotations

from edge.errors import FunctionError, NoResponse
from edge.sandbox import host
from edge.sandbox.awaiting import (
    ANSWERED,
    AWAITING,
    WAIT_UNTIL_PENDING,
    WAIT_UNTIL_SETTLED,
)
from edge.sandbox.host import Invocation, LogLine
from edge.sandbox.uncaught import REPORT_MARK


def test_the_marks_open_and_close_the_wait_and_log_nothing() -> None:
    lines: list[LogLine] = []
    inv = Invocation("fn", "req-1", {}, lines.append)
    with host.bound(inv):
        assert not inv.awaiting
        host._log_write(None, "trace", AWAITING)
        assert inv.awaiting
        host._log_write(None, "info", "still waiting")  # the function's own lines keep it
        assert inv.awaiting
        host._log_write(None, "trace", ANSWERED)
        assert not inv.awaiting
    assert [(x.level, x.message) for x in lines] == [("info", "still waiting")]


def test_the_wait_until_marks_set_and_clear_the_pending_flag_and_log_nothing() -> None:
    lines: list[LogLine] = []
    inv = Invocation("fn", "req-1", {}, lines.append)
    with host.bound(inv):
        host._log_write(None, "error", REPORT_MARK + "TypeError\0m\0t")
        host._log_write(None, "trace", WAIT_UNTIL_PENDING)
        assert inv.wait_until_pending and not inv.awaiting
        assert inv.uncaught is None  # a host call since the report: withdrawn
        host._log_write(None, "trace", WAIT_UNTIL_SETTLED)
        assert not inv.wait_until_pending
        for near in [WAIT_UNTIL_PENDING + "x", WAIT_UNTIL_PENDING[:-1]]:
            host._log_write(None, "info", near)
            assert not inv.wait_until_pending
    assert [x.message for x in lines if x.level == "info"] == [
        WAIT_UNTIL_PENDING + "x",
        WAIT_UNTIL_PENDING[:-1],
    ]


def test_a_mark_withdraws_a_report_like_any_host_call() -> None:
    inv = Invocation("fn", "req-1", {}, [].append)
    with host.bound(inv):
        host._log_write(None, "error", REPORT_MARK + "TypeError\0m\0t")
        assert inv.uncaught is not None
        host._log_write(None, "trace", AWAITING)
        assert inv.uncaught is None and inv.awaiting


def test_a_line_that_only_starts_like_a_mark_is_logged_as_written() -> None:
    lines: list[LogLine] = []
    inv = Invocation("fn", "req-1", {}, lines.append)
    near = [AWAITING + "x", "\0edge:awaiting", ANSWERED[:-1], "\0"]
    with host.bound(inv):
        for text in near:
            host._log_write(None, "trace", text)
    assert not inv.awaiting
    assert [x.message for x in lines] == near


def test_no_response_is_the_functions_fault_and_names_the_request() -> None:
    error = NoResponse("req-9")
    assert isinstance(error, FunctionError)
    assert (error.status, error.reason) == (500, "no_response")
    assert error.message.endswith("(request id req-9)")
    assert "(request id" not in NoResponse("").message
