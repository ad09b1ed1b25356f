"""The SDKs' uncaught-exception report, parsed in process (edge.sandbox.uncaught), and how an
invocation keeps it: only while no other host call follows it."""

from __future__ import annotations

import pytest

from edge.sandbox import host, uncaught
from edge.sandbox.host import Invocation, LogLine
from edge.sandbox.uncaught import REPORT_MARK, UNNAMED_TYPE, Uncaught


def report(*fields: str) -> str:
    return REPORT_MARK + "\0".join(fields)


def test_a_report_gives_type_message_and_traceback() -> None:
    text = "Traceback (most recent call last):\n  ...\nValueError: bad\0 still the traceback"
    got = uncaught.parse(report("ValueError", "bad", text))
    assert got == Uncaught("ValueError", "bad", text)


@pytest.mark.parametrize(
    "name",
    ["app.PaymentDeclined", "handle.<locals>.Oops", "$Weird_1", "string", "a" * 128],
)
def test_a_type_shaped_like_a_name_is_kept(name: str) -> None:
    assert uncaught.parse(report(name, "m", "t")).type_name == name


@pytest.mark.parametrize(
    "name",
    ["", "Not A Type", "<script>", "x;drop", "1abc", "a\nb", "a" * 129, "Err\u00e9"],
)
def test_any_other_type_is_unnamed(name: str) -> None:
    # The type is the only thing of the function's that reaches a node's client.
    assert uncaught.parse(report(name, "m", "t")).type_name == UNNAMED_TYPE


@pytest.mark.parametrize("payload", ["", "OnlyType", "Type\0message only"])
def test_a_report_missing_fields_is_unnamed_and_keeps_its_text(payload: str) -> None:
    got = uncaught.parse(REPORT_MARK + payload)
    assert got.type_name == UNNAMED_TYPE and got.message == ""
    assert got.traceback == payload.replace("\0", "\n")


def test_a_long_traceback_keeps_its_start_and_end() -> None:
    text = "first line\n" + "frame\n" * 5000 + "ValueError: the end"
    got = uncaught.parse(report("ValueError", "x" * 5000, text))
    assert len(got.traceback) <= uncaught.MAX_REPORT_CHARS
    assert got.traceback.startswith("first line\n") and got.traceback.endswith("the end")
    assert "characters cut" in got.traceback
    cut = int(got.traceback.split("…(")[1].split(" ")[0])
    assert len(got.traceback) - len(f"\n…({cut} characters cut)…\n") + cut == len(text)
    assert got.message.startswith("x" * uncaught.MAX_MESSAGE_CHARS)
    assert got.message.endswith("…(truncated)")


def test_an_ordinary_line_is_not_a_report() -> None:
    assert not uncaught.is_report("Traceback (most recent call last):")
    assert not uncaught.is_report("edge:uncaught-exception\0ValueError\0m\0t")
    assert uncaught.is_report(report("ValueError", "m", "t"))


def _invocation(lines: list[LogLine]) -> Invocation:
    return Invocation("fn", "req-1", {"k": "v"}, lines.append)


def test_the_report_is_the_requests_until_another_host_call() -> None:
    lines: list[LogLine] = []
    inv = _invocation(lines)
    with host.bound(inv):
        host._log_write(None, "error", report("ValueError", "secret", "Traceback...\nValueError"))
        assert inv.uncaught == Uncaught("ValueError", "secret", "Traceback...\nValueError")
        host._log_write(None, "info", "after")
        assert inv.uncaught is None
        host._log_write(None, "error", report("KeyError", "k", "t"))
        assert inv.uncaught is not None
        assert host._config_get(None, "k") == "v"
        assert inv.uncaught is None
    # One line for each report, its traceback only, at level error; the first carries the
    # exception for `edge dev`.
    assert [(x.level, x.message, x.source) for x in lines] == [
        ("error", "Traceback...\nValueError", "log"),
        ("info", "after", "log"),
        ("error", "t", "log"),
    ]
    assert lines[0].exception is not None and lines[0].exception.message == "secret"


def test_a_report_at_another_level_is_an_ordinary_line() -> None:
    lines: list[LogLine] = []
    inv = _invocation(lines)
    with host.bound(inv):
        host._log_write(None, "info", report("ValueError", "m", "t"))
    assert inv.uncaught is None and lines[0].message == report("ValueError", "m", "t")


def test_the_first_report_passes_the_line_cap_and_later_ones_do_not() -> None:
    lines: list[LogLine] = []
    inv = _invocation(lines)
    with host.bound(inv):
        for n in range(host.MAX_LOG_LINES_PER_REQUEST):
            host._log_write(None, "info", f"line {n}")
        host._log_write(None, "error", report("ValueError", "m", "first"))
        host._log_write(None, "error", report("ValueError", "m", "second"))
    assert len(lines) == host.MAX_LOG_LINES_PER_REQUEST + 1
    assert lines[-1].message == "first" and inv.dropped == 1
    assert inv.uncaught is not None and inv.uncaught.traceback == "second"
