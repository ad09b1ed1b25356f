"""Where function log lines and platform errors about a function go: one line each on stderr.

`json` for nodes (a collector reads it), `pretty` for `edge dev` (a person reads it). A node
that follows a control plane also ships them there (edge.node.logship).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO

from edge.sandbox.host import LogLine, LogSink


def line_json(line: LogLine) -> dict[str, Any]:
    return {
        "time": line.time_unix,
        "function": line.function,
        "version": line.version,
        "request_id": line.request_id,
        "trace_id": line.trace_id,
        "level": line.level,
        "source": line.source,
        "message": line.message,
    }


class LogWriter:
    def __init__(self, fmt: str = "json", stream: TextIO | None = None) -> None:
        self.fmt = fmt
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()

    def __call__(self, line: LogLine) -> None:
        if self.fmt == "json":
            text = json.dumps(line_json(line), ensure_ascii=False)
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(line.time_unix))
            where = "" if line.source == "log" else f" ({line.source})"
            text = (
                f"{stamp} {line.level:<5} {line.function}{where} [{line.request_id}] {line.message}"
            )
        with self._lock:
            print(text, file=self.stream, flush=True)


class Tee:
    """One sink feeding several (stderr and the shipper)."""

    def __init__(self, sinks: Sequence[LogSink]) -> None:
        self.sinks = tuple(sinks)

    def __call__(self, line: LogLine) -> None:
        for sink in self.sinks:
            sink(line)
