"""W3C traceparent parsing and a request's trace (sans-I/O, in process)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from edge.node.tracecontext import (
    MAX_TRACESTATE_CHARS,
    TraceParent,
    clean_tracestate,
    format_traceparent,
    new_span_id,
    new_trace_id,
    parse_traceparent,
)
from edge.node.tracing import RequestTrace

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


def test_a_valid_header_gives_its_fields() -> None:
    assert parse_traceparent(VALID) == TraceParent(TRACE, SPAN, 1)
    unsampled = parse_traceparent(f"00-{TRACE}-{SPAN}-00")
    assert unsampled is not None and not unsampled.sampled
    assert format_traceparent(TRACE, SPAN, 1) == VALID


@pytest.mark.parametrize(
    "value",
    [
        "",
        VALID[:-1],  # short
        VALID + "-",  # version 00 has exactly 55 characters
        VALID + "0",
        f"ff-{TRACE}-{SPAN}-01",  # version ff is forbidden
        f"0g-{TRACE}-{SPAN}-01",
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE.upper()}-{SPAN}-01",  # upper case hex
        f"00-{TRACE}-{SPAN}-0x",
        f"00_{TRACE}-{SPAN}-01",
        f"00-{TRACE[:-1]}-{SPAN}0-01",  # fields shifted
        f"00-{TRACE} {SPAN}-01",
    ],
)
def test_invalid_headers_are_ignored(value: str) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_is_read_by_its_first_four_fields() -> None:
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01") == TraceParent(TRACE, SPAN, 1)
    assert parse_traceparent(f"cc-{TRACE}-{SPAN}-01-what-the-future-adds") == TraceParent(
        TRACE, SPAN, 1
    )
    # ...but only after a separator.
    assert parse_traceparent(f"cc-{TRACE}-{SPAN}-01x") is None


@given(st.text(max_size=80))
@example(VALID)
@example(VALID[:54] + "\u0661")
def test_any_text_parses_or_is_none(value: str) -> None:
    got = parse_traceparent(value)
    if got is not None:
        assert format_traceparent(got.trace_id, got.parent_id, got.flags) == value[:55]


def test_new_ids_are_hex_of_the_right_length_and_never_zero() -> None:
    traces = {new_trace_id() for _ in range(200)}
    spans = {new_span_id() for _ in range(200)}
    assert len(traces) == 200 and len(spans) == 200
    pairs = zip(sorted(traces), sorted(spans), strict=True)
    assert all(parse_traceparent(format_traceparent(t, s, 0)) for t, s in pairs)


def test_tracestate_passes_unless_too_long_or_binary() -> None:
    assert clean_tracestate("vendor=abc,other=1") == "vendor=abc,other=1"
    assert clean_tracestate("a=" + "x" * MAX_TRACESTATE_CHARS) == ""
    assert clean_tracestate("a=b\r\nx: y") == ""


def test_a_request_joins_the_callers_trace_and_keeps_its_sampling() -> None:
    t = RequestTrace.start(VALID, "v=1", exporting=True)
    assert (t.trace_id, t.parent_id, t.flags, t.tracestate) == (TRACE, SPAN, 1, "v=1")
    assert t.span_id != SPAN and t.traceparent() == f"00-{TRACE}-{t.span_id}-01"
    assert t.spans == []
    t.note("edge.function", "default/hello")
    t.add("execute", 1, 2)
    spans = t.finish(200)
    assert [s.name for s in spans] == ["execute", "route"]
    assert spans[0].parent_id == t.span_id and spans[1].parent_id == SPAN
    assert spans[1].attributes == {"edge.function": "default/hello",
                                   "http.response.status_code": 200}
    # Flags we do not know are not passed on; a later version is answered as 00.
    later = RequestTrace.start(f"01-{TRACE}-{SPAN}-ff-extra", "", exporting=False)
    assert later.traceparent() == f"00-{TRACE}-{later.span_id}-03"
    # The caller did not sample: we propagate and record nothing.
    quiet = RequestTrace.start(f"00-{TRACE}-{SPAN}-00", "", exporting=True)
    assert quiet.spans is None and quiet.traceparent().endswith("-00")


def test_a_new_trace_is_sampled_only_when_this_node_exports() -> None:
    on = RequestTrace.start("", "", exporting=True)
    off = RequestTrace.start("garbage", "v=1", exporting=False)
    assert on.flags == 1 and on.spans == [] and on.parent_id == ""
    assert off.flags == 0 and off.spans is None and off.tracestate == ""
    assert off.trace_id != on.trace_id
    off.add("execute", 1, 2)
    off.note("x", 1)
    assert off.finish(200) == [] and off.attributes is None


def test_a_node_without_an_endpoint_never_loads_the_sdk() -> None:
    import subprocess
    import sys

    code = (
        "import sys, edge.node.main, edge.node.app\n"
        "from edge.node.config import parse_node_config\n"
        "from pathlib import Path\n"
        "assert edge.node.main.span_exporter(parse_node_config({}, 'x', Path('.'))) is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_function_cannot_set_the_platforms_trace_or_request_id_headers() -> None:
    from edge.node.http import response_headers

    got = response_headers([("traceparent", VALID), ("X-Request-Id", "forged"), ("a", "b")], "r1")
    assert got == [(b"a", b"b"), (b"x-request-id", b"r1")]
