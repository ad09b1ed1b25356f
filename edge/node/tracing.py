"""One request's place in a trace, and the spans a node records for it (sans-I/O).

Every request gets a trace id (the caller's, from a valid `traceparent`, else a new one) and a
span id for this node's work on it; the response, the function's log lines and a forwarded
request carry them. Spans are kept only when an exporter is configured and the trace is sampled:
otherwise `spans` is None and nothing but the two ids exists per request.

The spans a node records, all in the request's trace:
    route        the node's whole handling of the request (server span; parent: the caller's)
    instantiate  creating the function's instance (child of route)
    execute      running the handler (child of route)
    forward      the L7 spill to another region's node (client span, child of route); the
                 forwarded request's traceparent names it as parent, so the next node's route
                 span hangs under it
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from edge.node.tracecontext import (
    KNOWN_FLAGS,
    SAMPLED,
    clean_tracestate,
    format_traceparent,
    new_span_id,
    new_trace_and_span_id,
    parse_traceparent,
)

AttributeValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class SpanRecord:
    name: str
    span_id: str
    parent_id: str  # "" for a root span
    start_ns: int  # unix epoch nanoseconds
    end_ns: int
    kind: str = "internal"  # "server", "client" or "internal"
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    error: str = ""  # the platform's reason when the work failed


@dataclass(slots=True)
class RequestTrace:
    trace_id: str
    span_id: str  # this node's route span
    parent_id: str  # the caller's span, "" when the trace starts here
    flags: int
    tracestate: str
    started_ns: int
    spans: list[SpanRecord] | None  # None: not recorded (no exporter, or not sampled)
    attributes: dict[str, AttributeValue] | None = None  # of the route span, when recorded

    @classmethod
    def start(cls, traceparent: str, tracestate: str, exporting: bool) -> RequestTrace:
        """From the request's headers ("" when absent). A new trace is sampled when this node
        exports; a caller's trace keeps the caller's decision."""
        parent = parse_traceparent(traceparent) if traceparent else None
        if parent is None:
            trace_id, span_id = new_trace_and_span_id()
            parent_id, flags, state = "", SAMPLED if exporting else 0, ""
        else:
            trace_id, span_id = parent.trace_id, new_span_id()
            parent_id, flags = parent.parent_id, parent.flags & KNOWN_FLAGS
            state = clean_tracestate(tracestate) if tracestate else ""
        if exporting and flags & SAMPLED:
            return cls(trace_id, span_id, parent_id, flags, state, time.time_ns(), [], {})
        return cls(trace_id, span_id, parent_id, flags, state, 0, None)

    def traceparent(self, span_id: str | None = None) -> str:
        """The header naming `span_id` (default: the route span) as the parent."""
        return format_traceparent(self.trace_id, span_id or self.span_id, self.flags)

    def note(self, key: str, value: AttributeValue) -> None:
        if self.attributes is not None:
            self.attributes[key] = value

    def add(
        self,
        name: str,
        start_ns: int,
        end_ns: int,
        *,
        span_id: str | None = None,
        kind: str = "internal",
        attributes: Mapping[str, AttributeValue] | None = None,
        error: str = "",
    ) -> None:
        if self.spans is not None:
            self.spans.append(SpanRecord(name, span_id or new_span_id(), self.span_id, start_ns,
                                         end_ns, kind, attributes or {}, error))  # fmt: skip

    def finish(self, status: int, error: str = "") -> list[SpanRecord]:
        """Every span of this request, the route span last; [] when not recorded."""
        if self.spans is None:
            return []
        attributes = {**(self.attributes or {}), "http.response.status_code": status}
        route = SpanRecord("route", self.span_id, self.parent_id, self.started_ns,
                           time.time_ns(), "server", attributes, error)  # fmt: skip
        return [*self.spans, route]


class SpanExporter(Protocol):
    """Where recorded spans go (edge.node.otlp when an OTLP endpoint is configured)."""

    def export(self, trace_id: str, flags: int, parent_remote: bool,
               spans: list[SpanRecord]) -> None: ...  # fmt: skip

    def close(self) -> None: ...
