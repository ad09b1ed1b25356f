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
import re
from typing import NamedTuple

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
SAMPLED = 0x01
# sampled, and Level 2's "random trace id"; other bits are unknown to us and, as the
# recommendation asks, not passed on.
KNOWN_FLAGS = 0x03
# One compiled match checks every field's length and alphabet at once (cheaper than per-char
# checks in Python); the rules it cannot say are checked after it.
_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
MAX_TRACESTATE_CHARS = 512  # the recommendation lets a vendor cut what is longer


class TraceParent(NamedTuple):  # a tuple: built on every traced request, cheaper than a class
    trace_id: str  # 32 lower-case hex digits
    parent_id: str  # 16 lower-case hex digits: the caller's span
    flags: int  # bit 0: the caller may record (sampled)

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)


def parse_traceparent(value: str) -> TraceParent | None:
    """The header's fields, or None when it is missing or invalid."""
    m = _TRACEPARENT_RE.fullmatch(value)
    if m is None:
        return None
    version, trace_id, parent_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None):
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


def new_trace_and_span_id() -> tuple[str, str]:
    """Both at once: one call into the generator instead of two (every request pays this)."""
    ids = f"{random.getrandbits(192):048x}"
    if ids[:32] == _ZERO_TRACE or ids[32:] == _ZERO_SPAN:
        return new_trace_id(), new_span_id()
    return ids[:32], ids[32:]


def new_span_id() -> str:
    while True:
        bits = random.getrandbits(64)
        if bits:
            return f"{bits:016x}"
