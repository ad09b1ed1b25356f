"""Instances made ahead of requests, for functions whose instantiation is expensive.

A componentize-py component spends ~0.5 ms in instantiation (wasmtime fills ~6,300 table
entries and ~1,200 imports of its dynamically linked libraries one function reference at a
time), about as much as the call it serves (C and componentize-js components: 15-30 µs).
When a function's instantiations are slow (the median of its first few, in thread CPU time so a
busy machine does not fool it), a background thread keeps one instance ready: a request takes
it and a new one is started. Each instance still serves exactly one request, so isolation is
the same as instantiating on the request path; only the latency moves. The stores of finished
requests are closed off the request path too, on a second thread: a Python hello's close (the
resident pool's slot reset copies its 12 MiB image back) costs as much CPU as its instantiation
(1.3 ms each on the twelfth session's machine), and on one thread the two did not fit between
requests 2 ms apart (p50 0.46-1.17 ms, against 0.41-0.46 ms with a closing thread; back to back
1.85-2.16 ms against 2.41-3.11; but ~20% more CPU per request, as the copy runs beside the
next instantiation instead of after it).

Instances are made without a request bound (no invocation): a component whose start code calls
`log` or `config` fails there, and such a function simply goes back to instantiating per request.
"""

from __future__ import annotations

import threading
import weakref
from typing import Protocol

from edge.sandbox.worker import BackgroundWorker, Job

SAMPLES = 8  # instantiations measured before deciding
WAIT_S = 0.05  # longest a request waits for an instance being prepared before making its own
# Stores waiting to be closed on the preparer thread, at most: each holds a pool slot until it
# is closed, so beyond this a request closes its own store rather than exhaust the pool.
MAX_PENDING_CLOSES = 32


class Preparable(Protocol):
    def refill(self) -> None: ...


class Closable(Protocol):
    def close(self) -> None: ...


class Slot:
    """A function's ready instance, if any, and whether one is being made."""

    def __init__(self) -> None:
        self.cv = threading.Condition(threading.Lock())
        self.ready: object | None = None
        self.preparing = False
        self.waiting = False


class Preparer:
    """Two daemon threads per engine, started on first use, each fed through a queue: one makes
    instances, one closes stores."""

    def __init__(self) -> None:
        self._worker = BackgroundWorker("instance-preparer")
        self._closer = BackgroundWorker("store-closer")
        self._lock = threading.Lock()
        self._pending_closes = 0

    def want(self, function: Preparable) -> None:
        ref = weakref.ref(function)  # an unloaded function must not be kept alive by us

        def refill() -> None:
            target = ref()
            if target is not None:
                target.refill()

        self._put(refill)

    def retire(self, store: Closable) -> None:
        """Closes `store` on the closing thread, or right here when too many are waiting."""
        with self._lock:
            queued = self._pending_closes < MAX_PENDING_CLOSES
            if queued:
                self._pending_closes += 1
        if not queued:
            store.close()
            return

        def close() -> None:
            try:
                store.close()
            finally:
                with self._lock:
                    self._pending_closes -= 1

        self._closer.put(close)

    def _put(self, job: Job) -> None:
        self._worker.put(job)

    def close(self) -> None:
        self._worker.close()
        self._closer.close()
