"""Span export over OTLP/HTTP (protobuf) with the OpenTelemetry SDK's batch processor.

Imported only when `[tracing] otlp_endpoint` (or OTEL_EXPORTER_OTLP_ENDPOINT) is set, so a node
without it never loads the SDK. The node chooses its own trace and span ids (they travel in
headers whether or not anything is exported), so its spans are handed to the SDK as finished
ReadableSpans rather than started through an SDK tracer. The batch processor's queue is bounded
and exports from its own thread; a collector that is down costs dropped spans, not requests.
"""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from edge.node.tracing import SpanRecord

TRACES_PATH = "/v1/traces"
_KINDS = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT, "internal": SpanKind.INTERNAL}
_OK = Status(StatusCode.UNSET)


def traces_url(endpoint: str) -> str:
    """OTEL_EXPORTER_OTLP_ENDPOINT's rule: the base URL, to which the signal's path is added."""
    return endpoint.rstrip("/") + TRACES_PATH


class OtlpExporter:
    def __init__(
        self, endpoint: str, service_name: str, node_id: str, region: str,
        schedule_delay_ms: float = 500.0,
    ) -> None:  # fmt: skip
        self.resource = Resource.create(
            {"service.name": service_name, "service.instance.id": node_id, "cloud.region": region}
        )
        self.scope = InstrumentationScope("edge.node")
        self.processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=traces_url(endpoint), timeout=5.0),
            schedule_delay_millis=schedule_delay_ms,
        )

    def export(
        self, trace_id: str, flags: int, parent_remote: bool, spans: list[SpanRecord]
    ) -> None:
        tid, tflags = int(trace_id, 16), TraceFlags(flags)
        ids = {s.span_id for s in spans}
        for s in spans:
            parent = None
            if s.parent_id:
                remote = parent_remote and s.parent_id not in ids
                parent = SpanContext(tid, int(s.parent_id, 16), remote, tflags)
            status = Status(StatusCode.ERROR, s.error) if s.error else _OK
            self.processor.on_end(ReadableSpan(
                s.name, SpanContext(tid, int(s.span_id, 16), False, tflags), parent,
                self.resource, dict(s.attributes), kind=_KINDS[s.kind], status=status,
                start_time=s.start_ns, end_time=s.end_ns, instrumentation_scope=self.scope,
            ))  # fmt: skip

    def close(self) -> None:
        self.processor.shutdown()  # type: ignore[no-untyped-call]
