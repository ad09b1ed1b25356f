"""A guest's stdout/stderr becomes whole log lines, whatever pieces it writes them in."""

from __future__ import annotations

from edge.sandbox import host


def route_with(lines: list[host.LogLine]) -> host.OutputRoute:
    route = host.OutputRoute()
    route.invocation = host.Invocation("f", "req-1", {}, lines.append)
    return route


def test_pieces_become_lines_and_the_rest_is_flushed_at_the_end() -> None:
    lines: list[host.LogLine] = []
    route = route_with(lines)
    out, err = route.writer("stdout"), route.writer("stderr")
    for piece in [b"Value", b"Error", b": ", b"boom\r\nnext ", b"line\n\n", b"tail \xe2"]:
        out(piece)
    out(b"\x9c\x93")  # the rest of a UTF-8 character split across writes
    err(b"on stderr")  # the stdout line held so far goes first: the order written in
    route.flush()
    assert [(x.source, x.level, x.message) for x in lines] == [
        ("stdout", "info", "ValueError: boom"),
        ("stdout", "info", "next line"),
        ("stdout", "info", ""),
        ("stdout", "info", "tail ✓"),
        ("stderr", "error", "on stderr"),
    ]
    route.flush()  # nothing is held over into the next call
    assert len(lines) == 5


def test_a_line_that_never_ends_is_not_held_without_bound() -> None:
    lines: list[host.LogLine] = []
    write = route_with(lines).writer("stdout")
    for _ in range(3):
        write(b"x" * (host.MAX_LOG_LINE_BYTES // 2 + 1))
    assert len(lines) == 1 and lines[0].message.startswith("x" * host.MAX_LOG_LINE_BYTES)
