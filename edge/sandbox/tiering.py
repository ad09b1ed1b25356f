"""Tier-up, as V8 and the JVM do it: serve baseline code at once, switch to optimised code later.

Cranelift compiles a componentize-py component in ~3.7 s, Winch (wasmtime's baseline compiler)
in ~0.9 s; the fresh request cost of the hellos is about the same on both, though CPU-heavy code
runs slower on Winch. So a node given a large component whose Cranelift code is not in the
compile cache compiles it with Winch, serves it, and queues the Cranelift compile here. When it
is done the function swaps the code it runs in one assignment (see LoadedFunction): a request
runs on one tier from instantiation to its answer, and instances of the old tier made ahead are
closed, never served. Both tiers get a fresh instance per request, the same deadline (the ticker
bumps every engine's epoch), memory limit and growcheck-checked code.

One worker compiles, one component at a time: compiles already use every core, and a burst of
new versions should not start a burst of threads. A job holds only a weak reference to its
function, so one unloaded while queued or compiling is skipped; a failed compile leaves the
baseline code serving (the job reports it to the function's log).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edge.sandbox.worker import BackgroundWorker


@dataclass
class TierStats:
    """Counted on the worker thread only, read by metrics when scraped."""

    ups: int = 0
    failures: int = 0


class TierUps:
    def __init__(self) -> None:
        self.worker = BackgroundWorker("tier-up")
        self.stats = TierStats()
        self._closed = False

    def want(self, job: Callable[[], bool], failed: Callable[[Exception], None]) -> None:
        """Runs `job` on the worker: True when it switched a function to optimised code, False
        when there was nothing to do any more (the function was unloaded)."""

        def run() -> None:
            if self._closed:  # the engine is closing: compiling for it would be for nothing
                return
            try:
                switched = job()
            except Exception as e:
                self.stats.failures += 1
                failed(e)
                return
            self.stats.ups += switched

        self.worker.put(run)

    def close(self) -> None:
        """Skips the compiles still queued; one running finishes on its daemon thread."""
        self._closed = True
        self.worker.close()
