"""The bounded buffer between functions' log lines and the shipper (sans-I/O, thread-safe).

Functions log from worker threads; the shipper takes batches from the event loop. When the
buffer is full (the control plane is slow or gone) a new line is refused and counted against
its function, and the next batch carries the count, so nothing is dropped silently: the
function's log shows "N log lines dropped". A batch that could not be delivered is put back,
counts included; what no longer fits is counted as dropped.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from edge.sandbox.host import LogLine


@dataclass(frozen=True)
class Batch:
    lines: list[LogLine]
    dropped: dict[str, int] = field(default_factory=dict)  # function -> lines refused

    def __bool__(self) -> bool:
        return bool(self.lines or self.dropped)

    def drop_records(self, now_unix: float) -> list[LogLine]:
        """One warning line per function that lost lines, for that function's log."""
        return [
            LogLine(fn, "", "warn", f"{n} log line{'s' if n != 1 else ''} dropped "
                    "(the node's log buffer was full)", "platform", now_unix)
            for fn, n in sorted(self.dropped.items())
        ]  # fmt: skip


class LogBuffer:
    def __init__(self, capacity_lines: int) -> None:
        if capacity_lines < 1:
            raise ValueError("capacity_lines must be at least 1")
        self.capacity_lines = capacity_lines
        self._lines: deque[LogLine] = deque()
        self._dropped: dict[str, int] = {}
        self._lock = threading.Lock()
        self.dropped_total = 0  # every line ever refused, for metrics

    def __len__(self) -> int:
        return len(self._lines)

    def offer(self, line: LogLine) -> bool:
        """Keeps the line, or counts it as dropped (False) when the buffer is full."""
        with self._lock:
            if len(self._lines) < self.capacity_lines:
                self._lines.append(line)
                return True
            self._count_drop(line.function)
            return False

    def take(self, max_lines: int) -> Batch:
        """The oldest lines (up to max_lines) and every pending drop count."""
        with self._lock:
            n = min(max_lines, len(self._lines))
            lines = [self._lines.popleft() for _ in range(n)]
            dropped, self._dropped = self._dropped, {}
            return Batch(lines, dropped)

    def put_back(self, batch: Batch) -> None:
        """Returns an undelivered batch to the front, in order; what does not fit is dropped
        (the newest first) and counted."""
        with self._lock:
            for fn, n in batch.dropped.items():
                self._dropped[fn] = self._dropped.get(fn, 0) + n
            room = self.capacity_lines - len(self._lines)
            keep = batch.lines[: max(room, 0)]
            for line in batch.lines[len(keep):]:
                self._count_drop(line.function)
            self._lines.extendleft(reversed(keep))

    def drop(self, lines: Iterable[LogLine]) -> None:
        """Counts lines given up on (a batch the control plane refused)."""
        with self._lock:
            for line in lines:
                self._count_drop(line.function)

    def _count_drop(self, function: str) -> None:
        self._dropped[function] = self._dropped.get(function, 0) + 1
        self.dropped_total += 1
