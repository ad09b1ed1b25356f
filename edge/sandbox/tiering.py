"""Tier-up, as V8 and the JVM do it: serve baseline code at once, switch to optimised code later.

Cranelift compiles a componentize-py component in ~3.7 s, Winch (wasmtime's baseline compiler)
in ~0.9 s; the fresh request cost of the hellos is about the same on both, though CPU-heavy code
runs slower on Winch. So a node given a large component whose Cranelift code is not in the
compile cache compiles it with Winch, serves it, and queues the Cranelift compile here. When it
is done the function swaps the code it runs in one assignment (see LoadedFunction): a request
runs on one tier from instantiation to its answer, and instances of the old tier made ahead are
closed, never served. Both tiers get a fresh instance per request, the same deadline (the ticker
bumps every engine's epoch), memory limit and growcheck-checked code.

One worker compiles, one component at a time, on one core (SandboxEngine.background_compiler):
a burst of new versions should not start a burst of threads, nor take every core from the
requests being served meanwhile. A job holds only a weak reference to its
function, so one unloaded while queued or compiling is skipped; a failed compile leaves the
baseline code serving (the job reports it to the function's log). The baseline code's engine
is closed once no function runs that code any more (SandboxEngine.baseline_code).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from edge.sandbox.code import Code
from edge.sandbox.worker import BackgroundWorker


class Switchable(Protocol):
    def switch(self, code: Code) -> None: ...


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

    def want(
        self,
        function: Switchable,
        compile_top: Callable[[], Code],
        failed: Callable[[Exception], None],
    ) -> None:
        """Queues `compile_top` (which must not hold `function`); `function.switch` gets its
        code if `function` is still loaded then, `failed` hears why it could not compile."""
        ref = weakref.ref(function)

        def run() -> None:
            # The engine closing, or the function unloaded: the compile would be for nothing.
            if self._closed or ref() is None:
                return
            try:
                code = compile_top()
            except Exception as e:
                self.stats.failures += 1
                failed(e)
                return
            target = ref()
            if target is not None:
                target.switch(code)
                self.stats.ups += 1

        self.worker.put(run)

    def close(self) -> None:
        """Skips the compiles still queued; one running finishes on its daemon thread."""
        self._closed = True
        self.worker.close()
