"""Where function log lines and platform errors about a function go: one line each on stderr.

`json` for nodes (a collector reads it), `pretty` for `edge dev` (a person reads it).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import TextIO

from edge.sandbox.host import LogLine


class LogWriter:
    def __init__(self, fmt: str = "json", stream: TextIO | None = None) -> None:
        self.fmt = fmt
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()

    def __call__(self, line: LogLine) -> None:
        if self.fmt == "json":
            text = json.dumps(
                {
                    "time": line.time_unix,
                    "function": line.function,
                    "request_id": line.request_id,
                    "level": line.level,
                    "source": line.source,
                    "message": line.message,
                },
                ensure_ascii=False,
            )
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(line.time_unix))
            where = "" if line.source == "log" else f" ({line.source})"
            text = (
                f"{stamp} {line.level:<5} {line.function}{where} [{line.request_id}] {line.message}"
            )
        with self._lock:
            print(text, file=self.stream, flush=True)
