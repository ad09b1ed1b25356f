"""One daemon thread fed through a queue, started on first use: the sandbox's background work
(instances made ahead, stores closed off the request path, tier-up compiles) runs on a few of
these rather than on a thread per function."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable

Job = Callable[[], None]


class BackgroundWorker:
    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, job: Job) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                    self._thread.start()
        self._queue.put(job)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            with contextlib.suppress(Exception):  # the thread must outlive any one job
                job()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            if self._thread is not threading.current_thread():
                self._thread.join(timeout=1)
