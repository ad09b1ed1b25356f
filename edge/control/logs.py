"""Function logs at the control plane (sans-I/O): what nodes ship, validated line by line.

Nodes post batches of lines (edge.node.logship); each line names its function as
"<tenant>/<name>", as snapshots do, and the node adds its region and id. edge.control.log_store
keeps them, with bounded retention: a log store for the long term is a collector's job, and
every node also writes its lines to stderr.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from edge.config.function import NAME_RE
from edge.errors import BadRequest

LEVELS = frozenset({"trace", "debug", "info", "warn", "error"})
SOURCES = frozenset({"log", "stdout", "stderr", "platform"})
MAX_BATCH_LINES = 5000
MAX_MESSAGE_CHARS = 8192
_TRACE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_SHORT_RE = re.compile(r"^[A-Za-z0-9._:-]{0,128}$")


@dataclass(frozen=True)
class NodeLine:
    """One valid line of a node's batch, before it is numbered."""

    tenant: str
    function: str
    version: str
    request_id: str
    trace_id: str
    level: str
    source: str
    message: str
    time_unix: float


@dataclass(frozen=True)
class StoredLine:
    seq: int
    region: str
    node: str
    line: NodeLine

    def to_json(self) -> dict[str, Any]:
        x = self.line
        return {
            "seq": self.seq, "time": x.time_unix, "function": x.function, "version": x.version,
            "region": self.region, "node": self.node, "request_id": x.request_id,
            "trace_id": x.trace_id, "level": x.level, "source": x.source, "message": x.message,
        }  # fmt: skip


def parse_line(raw: Any) -> NodeLine | None:
    """A node's line, or None when it is malformed (the rest of the batch still counts)."""
    if not isinstance(raw, dict):
        return None
    key, level, source = raw.get("function"), raw.get("level"), raw.get("source", "log")
    texts = [raw.get(k, "") for k in ("version", "request_id", "trace_id", "message")]
    t = raw.get("time")
    if not (isinstance(key, str) and isinstance(level, str) and isinstance(source, str)):
        return None  # before the set lookups: a list or an object is not even hashable
    if level not in LEVELS or source not in SOURCES:
        return None
    if not all(isinstance(x, str) for x in texts):
        return None
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        return None
    tenant, _, name = key.partition("/")
    version, request_id, trace_id, message = texts
    if not (tenant and NAME_RE.match(name) and _SHORT_RE.match(tenant)):
        return None
    if not (_SHORT_RE.match(version) and _SHORT_RE.match(request_id)):
        return None
    if trace_id and not _TRACE_ID_RE.match(trace_id):
        return None
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "…(truncated)"
    return NodeLine(tenant, name, version, request_id, trace_id, str(level), str(source),
                    message, float(t))  # fmt: skip


def parse_batch(body: dict[str, Any]) -> tuple[str, str, list[NodeLine], int]:
    """(node id, region, valid lines, how many were malformed); BadRequest for a bad body."""
    node, region, lines = body.get("node_id"), body.get("region"), body.get("lines")
    if not isinstance(node, str) or not 0 < len(node) <= 128:
        raise BadRequest("node_id (1..128 chars) is required")
    if not isinstance(region, str) or not 0 < len(region) <= 64:
        raise BadRequest("region (1..64 chars) is required")
    if not isinstance(lines, list) or len(lines) > MAX_BATCH_LINES:
        raise BadRequest(f"lines must be a list of at most {MAX_BATCH_LINES} lines")
    parsed = [parse_line(raw) for raw in lines]
    valid = [p for p in parsed if p is not None]
    return node, region, valid, len(parsed) - len(valid)
