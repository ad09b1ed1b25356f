"""The source map decoder (edge.sandbox.sourcemap), in process: VLQ, lookups, malformed maps."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.sandbox.sourcemap import Original, SourceMapError, decode

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def vlq(n: int) -> str:
    """An independent encoder (the spec's description, written the other way round)."""
    value = (-n << 1) | 1 if n < 0 else n << 1
    out = ""
    while True:
        digit, value = value & 31, value >> 5
        out += B64[digit | (32 if value else 0)]
        if not value:
            return out


def source_map(mappings: str, sources: list[Any] | None = None, **extra: Any) -> str:
    return json.dumps({"version": 3, "sources": sources or ["a.js", "b.js"], "names": ["x"],
                       "mappings": mappings, **extra})  # fmt: skip


def test_vlq_digits_as_the_spec_has_them() -> None:
    # 0 -> A, 1 -> C, -1 -> D, 15 -> e, 16 -> gB (two digits), -16 -> hB
    assert [vlq(n) for n in (0, 1, -1, 15, 16, -16)] == ["A", "C", "D", "e", "gB", "hB"]
    # One line: column 16 of a.js line 1 col 0, then +4 columns -> b.js line 0 col 3.
    m = decode(source_map("gBACA,ICDG"))
    assert m.segments == 2
    assert m.original(0, 16) == Original("a.js", 1, 0)
    assert m.original(0, 19) == Original("a.js", 1, 0)  # between segments: the one before
    assert m.original(0, 20) == Original("b.js", 0, 3)
    assert m.original(0, 500) == Original("b.js", 0, 3)


def test_positions_nothing_maps() -> None:
    # Line 0 starts at column 4; line 1 is empty; line 2 has a one-field segment (no source).
    m = decode(source_map("IAAA;;A"))
    assert m.original(0, 3) is None  # before the first segment
    assert m.original(1, 0) is None
    assert m.original(2, 0) is None
    assert m.original(3, 0) is None and m.original(-1, 0) is None and m.original(0, -1) is None


def test_source_fields_carry_across_lines_and_the_column_restarts() -> None:
    # Line 0: col 2 -> b.js 5:1. Line 1: col 2 (restarted) -> source +0, line +1, col -1.
    m = decode(source_map(";".join([vlq(2) + vlq(1) + vlq(5) + vlq(1), vlq(2) + "ACD"])))
    assert m.original(0, 2) == Original("b.js", 5, 1)
    assert m.original(1, 2) == Original("b.js", 6, 0)


def test_source_root_and_null_sources() -> None:
    m = decode(source_map("AAAA,CCAA", sources=["x.js", None], sourceRoot="src"))
    assert m.sources == ["src/x.js", ""]
    assert m.original(0, 1) == Original("", 0, 0)


def test_a_name_field_is_accepted_and_range_checked() -> None:
    assert decode(source_map("AAAAA")).original(0, 0) == Original("a.js", 0, 0)
    with pytest.raises(SourceMapError, match="name index 1 out of range"):
        decode(source_map("AAAAC"))


@pytest.mark.parametrize(
    ("mappings", "error"),
    [
        ("AA!A", "invalid character '!'"),
        ("AAAé", "invalid character"),
        ("AAAg", "VLQ number cut short"),  # continuation bit on the last digit
        ("AAAg,AAAA", "VLQ number cut short"),
        ("gggggggggB", "VLQ number too large"),
        ("AA", "has 2 fields"),
        ("AAAAAA", "has 6 fields"),
        ("AAAA,,AAAA", "has 0 fields"),
        ("ACAA", "source index 1"),  # fine: b.js ...
        ("AEAA", "source index 2 out of range"),
        ("ADAA", "source index -1 out of range"),
        ("AADA", "original line or column is negative"),
        ("D", "generated column is negative"),
        ("EAAA,DAAA", "out of order"),
        ("+/////H", "does not fit in 32 bits"),
    ],
)
def test_malformed_mappings_raise_a_typed_error(mappings: str, error: str) -> None:
    if mappings == "ACAA":  # the control: index 1 of two sources is in range
        assert decode(source_map(mappings)).original(0, 0) == Original("b.js", 0, 0)
        return
    with pytest.raises(SourceMapError, match=error):
        decode(source_map(mappings))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (b"\xff\xfe", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"version": 2, "sources": [], "mappings": ""}', "version 2"),
        ('{"version": 3, "sections": []}', "index maps"),
        ('{"version": 3, "mappings": ""}', "`sources` is missing"),
        ('{"version": 3, "sources": [1], "mappings": ""}', r"sources\[0\] is a int"),
        ('{"version": 3, "sources": [], "sourceRoot": 5, "mappings": ""}', "sourceRoot"),
        ('{"version": 3, "sources": [], "names": {}, "mappings": ""}', "`names` is not a list"),
        ('{"version": 3, "sources": []}', "`mappings` is missing"),
        ("[" * 100_000, "not JSON"),
    ],
)
def test_malformed_maps_raise_a_typed_error(text: str | bytes, error: str) -> None:
    with pytest.raises(SourceMapError, match=error):
        decode(text)


def test_segment_budget() -> None:
    text = source_map(";".join(["AAAA,CAAA"] * 3))
    assert decode(text, max_segments=6).segments == 6
    with pytest.raises(SourceMapError, match="more than 5 segments"):
        decode(text, max_segments=5)


def test_an_empty_map_maps_nothing() -> None:
    m = decode(source_map(""))
    assert m.segments == 0 and m.original(0, 0) is None


segment = st.tuples(
    st.integers(0, 40), st.integers(0, 2), st.integers(0, 5000), st.integers(0, 300)
)


@given(st.lists(st.lists(segment, max_size=6), max_size=8))
def test_round_trip_of_absolute_positions(lines: list[list[tuple[int, int, int, int]]]) -> None:
    """Encode absolute positions as the spec says (deltas), decode, and find each again."""
    sources = ["a.js", "b.js", "c.js"]
    prev = [0, 0, 0]
    rows = []
    expected: list[tuple[int, int, Original]] = []
    for number, segments in enumerate(lines):
        column = 0
        row = []
        for gap, source, line, col in segments:
            column += gap
            fields = (source, line, col)
            row.append(vlq(gap) + "".join(vlq(f - p) for f, p in zip(fields, prev, strict=True)))
            prev = list(fields)
            expected.append((number, column, Original(sources[source], line, col)))
        rows.append(",".join(row))
    m = decode(source_map(";".join(rows), sources=sources))
    last: dict[tuple[int, int], Original] = {}
    for number, column, original in expected:  # several segments at one column: the last wins
        last[(number, column)] = original
    for (number, column), original in last.items():
        assert m.original(number, column) == original
