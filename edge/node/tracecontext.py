"""W3C Trace Context (sans-I/O): reading and writing `traceparent`, new trace and span ids.

    traceparent = version "-" trace-id "-" parent-id "-" trace-flags
                  2 hex      32 hex       16 hex        2 hex        (lower case)

Parsed by hand, not with an OpenTelemetry propagator: it is a fixed format, every request pays
for the parse, and a node with tracing off creates no SDK objects at all. The rules, from the
W3C recommendation: version ff is invalid; version 00 is exactly 55 characters; a higher
version may append fields after a "-", and is read as 00 (its first four fields); an all-zero
trace id or parent id is invalid; upper-case hex is invalid. An invalid header is ignored (the
request starts a new trace) and so is its `tracestate`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
SAMPLED = 0x01
_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
MAX_TRACESTATE_CHARS = 512  # the recommendation lets a vendor cut what is longer


@dataclass(frozen=True)
class TraceParent:
    trace_id: str  # 32 lower-case hex digits
    parent_id: str  # 16 lower-case hex digits: the caller's span
    flags: int  # bit 0: the caller may record (sampled)

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)


def _is_hex(text: str) -> bool:
    return all(c in _HEX for c in text)


def parse_traceparent(value: str) -> TraceParent | None:
    """The header's fields, or None when it is missing or invalid."""
    if len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    version = value[:2]
    if not _is_hex(version) or version == "ff":
        return None
    if version == "00" and len(value) != 55:
        return None
    if len(value) > 55 and value[55] != "-":
        return None
    trace_id, parent_id, flags = value[3:35], value[36:52], value[53:55]
    if not (_is_hex(trace_id) and _is_hex(parent_id) and _is_hex(flags)):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return TraceParent(trace_id, parent_id, int(flags, 16))


def format_traceparent(trace_id: str, span_id: str, flags: int) -> str:
    return f"00-{trace_id}-{span_id}-{flags:02x}"


def clean_tracestate(value: str) -> str:
    """The caller's tracestate to pass on, or "" when it is too long or holds control
    characters (we add no entry of our own, so we never need to parse its members)."""
    if len(value) > MAX_TRACESTATE_CHARS or any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
        return ""
    return value


# Ids need to be unique, not secret: the module's Mersenne Twister is seeded from the OS and
# costs a fraction of os.urandom per id.
def new_trace_id() -> str:
    while True:
        bits = random.getrandbits(128)
        if bits:
            return f"{bits:032x}"


def new_span_id() -> str:
    while True:
        bits = random.getrandbits(64)
        if bits:
            return f"{bits:016x}"
