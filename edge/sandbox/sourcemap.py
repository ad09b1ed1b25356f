"""Source map (version 3, ECMA-426) decoding: generated position -> original position. Sans-I/O.

Only what a stack trace needs: `sources` (joined to `sourceRoot`) and `mappings`; `names` is
range-checked, never kept, and `sourcesContent` is ignored. The decoded segments live in four
flat 32-bit arrays plus a per-line index (16 bytes a segment), and `max_segments` bounds them,
so a hostile or huge map costs a known amount of memory. Anything malformed raises
SourceMapError, never IndexError or KeyError: a caller that catches one type is safe.
"""

from __future__ import annotations

import json
from array import array
from bisect import bisect_right
from typing import Any, NamedTuple

# 16 bytes a segment: 1M segments (a ~5 MB `mappings` string) is 16 MiB at most.
DEFAULT_MAX_SEGMENTS = 1 << 20

_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_INVALID = 0xFF
# One C-speed pass turns every base64 digit into its 6-bit value and anything else into 0xFF.
_TO_SIXBIT = bytes(_B64.index(b) if b in _B64 else _INVALID for b in range(256))
_CONTINUE, _DIGIT_BITS, _DIGIT_MASK = 0x20, 5, 0x1F
_MAX_CACHED = 4096
_MAX_SHIFT = 30  # a 32-bit number has at most 7 digits


class SourceMapError(ValueError):
    """A source map this decoder cannot use: not JSON, not version 3, bad VLQ, an index out of
    range, or over the segment budget."""


class Original(NamedTuple):
    source: str
    line: int  # 0-based, as in the map
    column: int  # 0-based


class SourceMap:
    """A decoded map: `original(line, column)` with 0-based generated positions."""

    def __init__(
        self,
        sources: list[str],
        line_starts: array[int],
        columns: array[int],
        source_ids: array[int],
        source_lines: array[int],
        source_columns: array[int],
    ) -> None:
        self.sources = sources
        self._line_starts = line_starts  # segments of generated line i: [starts[i], starts[i+1])
        self._columns = columns
        self._source_ids = source_ids  # -1: a segment that maps to no source
        self._source_lines = source_lines
        self._source_columns = source_columns

    @property
    def segments(self) -> int:
        return len(self._columns)

    def original(self, line: int, column: int) -> Original | None:
        """The original position of generated `line`:`column` (0-based): that of the last
        segment at or before the column on that line; None when nothing maps it."""
        if not 0 <= line < len(self._line_starts) - 1 or column < 0:
            return None
        lo, hi = self._line_starts[line], self._line_starts[line + 1]
        at = bisect_right(self._columns, column, lo, hi) - 1
        if at < lo:
            return None
        source = self._source_ids[at]
        if source < 0:
            return None
        return Original(self.sources[source], self._source_lines[at], self._source_columns[at])


def decode(data: bytes | str, max_segments: int = DEFAULT_MAX_SEGMENTS) -> SourceMap:
    """Parses a source map's JSON text. Raises SourceMapError."""
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise SourceMapError(f"not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise SourceMapError(f"a source map is a JSON object, got {type(raw).__name__}")
    if "sections" in raw:
        raise SourceMapError("index maps (`sections`) are not supported")
    if raw.get("version") != 3:
        raise SourceMapError(f"version {raw.get('version')!r}: only version 3 is supported")
    sources = _sources(raw)
    names = raw.get("names", [])
    if not isinstance(names, list):
        raise SourceMapError("`names` is not a list")
    mappings = raw.get("mappings")
    if not isinstance(mappings, str):
        raise SourceMapError("`mappings` is missing or not a string")
    try:
        return _decode_mappings(mappings, sources, len(names), max_segments)
    except OverflowError:  # array('i') refuses a position past 32 bits
        raise SourceMapError("a position in `mappings` does not fit in 32 bits") from None


def _sources(raw: dict[str, Any]) -> list[str]:
    sources = raw.get("sources")
    if not isinstance(sources, list):
        raise SourceMapError("`sources` is missing or not a list")
    root = raw.get("sourceRoot") or ""
    if not isinstance(root, str):
        raise SourceMapError("`sourceRoot` is not a string")
    if root and not root.endswith("/"):
        root += "/"
    out = []
    for i, source in enumerate(sources):
        if source is None:  # allowed by the spec: a source with no name
            out.append("")
        elif isinstance(source, str):
            out.append(root + source)
        else:
            raise SourceMapError(f"sources[{i}] is a {type(source).__name__}, not a string")
    return out


def _decode_mappings(
    mappings: str, sources: list[str], names: int, max_segments: int
) -> SourceMap:
    line_starts, columns = array("i", [0]), array("i")
    ids, lines, cols = array("i"), array("i"), array("i")
    # Segments repeat a lot (`AAAA`, `SAAS`...): each distinct one is decoded once, up to
    # _MAX_CACHED of them (a map of all-different segments would make the cache the largest
    # thing here).
    deltas: dict[str, tuple[int, ...]] = {}
    # Every field but the generated column is relative to its value in the previous segment,
    # across lines; the generated column restarts at 0 on each line.
    source = line = column = name = 0
    start, number, size = 0, 0, len(mappings)
    while start <= size:
        # Line by line rather than one split: a list of every line would cost more memory
        # than the decoded arrays.
        end = mappings.find(";", start)
        if end < 0:
            end = size
        text = mappings[start:end]
        generated = 0
        if text:
            for segment in text.split(","):
                d = deltas.get(segment)
                if d is None:
                    d = _vlq(segment, number)
                    if len(deltas) < _MAX_CACHED:
                        deltas[segment] = d
                if d[0] < 0 and len(columns) > line_starts[-1]:
                    raise SourceMapError(f"generated columns out of order on line {number}")
                generated += d[0]
                columns.append(generated)
                if len(d) == 1:
                    ids.append(-1)
                    lines.append(0)
                    cols.append(0)
                    continue
                source += d[1]
                if source < 0:  # -1 marks a segment without a source: caught here, not below
                    raise SourceMapError(f"source index {source} out of range on line {number}")
                line += d[2]
                column += d[3]
                ids.append(source)
                lines.append(line)
                cols.append(column)
                if len(d) == 5:
                    name += d[4]
                    if not 0 <= name < names:
                        raise SourceMapError(f"name index {name} out of range on line {number}")
            if len(columns) > max_segments:
                raise SourceMapError(f"more than {max_segments} segments")
        line_starts.append(len(columns))
        start, number = end + 1, number + 1
    # Ranges checked once, at C speed, over the whole arrays.
    if columns and min(columns) < 0:
        raise SourceMapError("a generated column is negative")
    if ids and max(ids) >= len(sources):
        raise SourceMapError(f"source index {max(ids)} out of range (0..{len(sources) - 1})")
    if lines and (min(lines) < 0 or min(cols) < 0):
        raise SourceMapError("an original line or column is negative")
    return SourceMap(sources, line_starts, columns, ids, lines, cols)


def _vlq(segment: str, line: int) -> tuple[int, ...]:
    """A segment's fields as signed numbers (base64 VLQ: 5 bits a digit, least significant
    first, continuation bit 0x20; the lowest bit of the number is its sign)."""
    out: list[int] = []
    value = shift = 0
    for char in segment.encode("latin-1", errors="replace"):
        digit = _TO_SIXBIT[char]
        if digit == _INVALID:
            raise SourceMapError(f"invalid character {chr(char)!r} in `mappings` on line {line}")
        value |= (digit & _DIGIT_MASK) << shift
        if digit & _CONTINUE:
            shift += _DIGIT_BITS
            if shift > _MAX_SHIFT:
                raise SourceMapError(f"VLQ number too large on line {line}")
            continue
        out.append(-(value >> 1) if value & 1 else value >> 1)
        value = shift = 0
    if shift:
        raise SourceMapError(f"VLQ number cut short in segment {segment!r} on line {line}")
    if len(out) not in (1, 4, 5):
        raise SourceMapError(
            f"segment {segment!r} on line {line} has {len(out)} fields (1, 4 or 5 expected)"
        )
    return tuple(out)
