"""The one wasmtime Engine of a node, its settings, and the epoch ticker behind deadlines.

Deadlines use epoch interruption (cheaper than fuel: one check per loop header and function
entry, no counting): a daemon thread bumps the engine's epoch every `epoch_tick_ms`, and each
store traps once its epoch deadline, set from the function's `deadline_ms`, passes.
"""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import version
from typing import TYPE_CHECKING

import wasmtime
from wasmtime import _ffi as ffi

from edge.sandbox import capi, growcheck
from edge.sandbox.prepare import Preparer
from edge.sandbox.tiering import TierUps

if TYPE_CHECKING:
    from edge.sandbox.code import Code

MIB = 1024 * 1024
IDLE_TICKS = 250  # ticks without wasm before the ticker sleeps (0.5 s at 2 ms)
# wasmtime's code generators, as its C API numbers them (wasmtime_strategy_t). Cranelift
# optimises; Winch, a baseline compiler, compiles a componentize-py component in 0.7 s instead
# of 3.5 s (componentize-js: 0.65 s instead of 4.2 s) for slower code: the `edge dev` loop.
COMPILERS = {"cranelift": 1, "winch": 2}
BASELINE = "winch"  # the tier a large component starts on while its optimised code compiles
# How often the ticker looks for baseline engines nothing uses any more (see _release_unused).
SWEEP_S = 1.0


def check_compiler(
    name: str, where: str, error: Callable[[str], Exception] = ValueError
) -> None:
    """The one check of a compiler name, wherever it comes from: raises `error` (the type says
    whose fault it is: ConfigError for node.toml, UsageError for a command line) with
    "<where> must be one of cranelift, winch, got '<name>'"."""
    if name not in COMPILERS:
        raise error(f"{where} must be one of {', '.join(sorted(COMPILERS))}, got {name!r}")


@dataclass(frozen=True)
class EngineSettings:
    epoch_tick_ms: int = 2
    # The pooling allocator pre-reserves instance slots and keeps warm memories for reuse;
    # bench/sandbox.py measures it against on-demand allocation.
    pooling: bool = True
    pool_total_instances: int = 512
    pool_max_memory_bytes: int = 1024 * MIB
    pool_warm_slots: int = 64
    # Freed slots are reset (madvise) 32 at a time instead of one per request: ~8 µs less per
    # fresh C request. A slot is reused only after its reset, so isolation is unchanged.
    pool_decommit_batch: int = 32
    # Components at least this large (componentize-py's, ~18 MiB: CPython and its snapshot
    # heap) get their own pool whose slots keep `pool_resident_bytes` of memory resident: a
    # freed slot is reset by copying the memory image back instead of dropping its pages, so
    # the next request writes to resident pages instead of taking ~200 copy-on-write faults
    # (0.4 ms for the Python hello), and there are no TLB shootdowns from the drop. The copy
    # runs where the store is closed: off the request path only for prepared functions. Not
    # for the rest: a memset per request of the C hello's 16 MiB stack (37 -> 515 µs), and the
    # JS hello (12 MiB, not prepared) measured p50 +10%, p99 -35%.
    resident_above_bytes: int = 16 * MIB
    # Components smaller than this (C functions) get memories initialized by copying their data
    # segments in at instantiation instead of mapping the memory image copy-on-write: a page
    # the start code or the handler reads before writing then costs one fault instead of two,
    # and none of them is a copy-on-write fault, which flushes the TLB of every core the process
    # ran on (C hello: 2 faults a request instead of 3, ~3.4 µs less CPU in bench.hotpath). A
    # component's data segments are smaller than it, so at most this much is copied; above it
    # copying would cost more than the faults it spares.
    copy_init_below_bytes: int = 64 * 1024
    pool_resident_bytes: int = 16 * MIB
    max_wasm_stack_bytes: int = 512 * 1024
    compiler: str = "cranelift"  # or "winch" (see COMPILERS)
    # Fresh instances made ahead of requests for functions slower than this to instantiate
    # (median thread CPU time of their first instantiations); see prepare.py.
    prepare_instances: bool = True
    prepare_above_us: int = 200
    # Tier-up (see tiering.py): a component at least this large whose code for `compiler` is
    # not in the compile cache is compiled with Winch first and served at once (Python hello:
    # 0.9 s instead of 3.7 s), then switched to `compiler`'s code compiled in the background.
    # Smaller ones (C: milliseconds to compile) go straight to `compiler`. Winch code runs in
    # an engine of its own, made on first use and closed once no function runs its code, with
    # a pool of the sizes above whose slots stay resident (see SandboxEngine.baseline_code).
    tier_up: bool = True
    tier_up_above_bytes: int = 1 * MIB

    def __post_init__(self) -> None:
        check_compiler(self.compiler, "compiler")

    @property
    def tiers_up(self) -> bool:
        """Whether large components start on the baseline compiler's code."""
        return self.tier_up and self.compiler != BASELINE

    def fingerprint(self) -> str:
        """What a serialized component depends on besides its bytes (compile cache key part)."""
        # Pool sizes do not change generated code; tunables that do are listed here.
        text = (
            f"wasmtime={version('wasmtime')};epoch=1;stack={self.max_wasm_stack_bytes};"
            f"growcheck={growcheck.VERSION};compiler={self.compiler}"
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def ticks_for(deadline_ms: int, tick_ms: int) -> int:
    # One extra tick: the deadline counts from the next tick, never earlier than asked.
    return -(-deadline_ms // tick_ms) + 1


# Pools, by how a freed slot's memory is reset and a new instance's memory is initialized.
MAPPED = "mapped"  # pages dropped; the memory image mapped copy-on-write (the default)
RESIDENT = "resident"  # pages kept; the image copied back (see resident_above_bytes)
COPIED = "copied"  # pages dropped; data segments copied in (see copy_init_below_bytes)
EngineKey = tuple[str, str]  # (compiler, pool)


class _Baseline:
    """A baseline engine and what keeps it: the Codes made in it, held weakly (a Code that is
    gone does not keep it), and the compiles into it under way (no Code yet)."""

    __slots__ = ("codes", "engine", "making")

    def __init__(self, engine: wasmtime.Engine) -> None:
        self.engine = engine
        self.codes: weakref.WeakSet[Code] = weakref.WeakSet()
        self.making = 0


class SandboxEngine:
    """Owns the Engines and the ticker thread. Close it once; closing twice is harmless.

    One Engine per (compiler, pool) in use: `engine` (the settings' compiler, the mapped
    pool) from the start, the others on first use. The ticker bumps the epoch of each,
    so deadlines hold whatever code a function runs. The baseline compiler's engine (tier-up)
    is closed again once no code made in it is left (see baseline_code)."""

    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = settings or EngineSettings()
        compiler = self.settings.compiler
        self.engine = _make_engine(self.settings, 0, compiler)
        self._engines: dict[EngineKey, wasmtime.Engine] = {(compiler, MAPPED): self.engine}
        self._baseline: _Baseline | None = None
        # Their addresses, for the ticker: a tuple replaced whole, so it never sees one half-made.
        self._tick_ptrs: tuple[int, ...] = (capi.address(self.engine),)
        self._engines_lock = threading.Lock()
        self._background: dict[bool, wasmtime.Engine] = {}  # by copy_init
        self.baseline_engines_made = 0
        self.baseline_engines_closed = 0
        self.sweeps = 0  # the ticker's looks for unused baseline engines (_release_unused)
        self._stop = threading.Event()
        # The ticker sleeps once no wasm has run for IDLE_TICKS ticks: an idle node (or 50 of
        # them on one machine) should not wake 500 times a second for nothing, and a busy one
        # should not pay a thread wake-up per request. Running calls are tokens in a set
        # (adding and discarding are atomic under the GIL, so no lock per request); `_entries`
        # only tells the ticker that calls happened (a lost increment does no harm).
        self._active: set[object] = set()
        self._entries = 0
        self._awake = True
        self._work = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="epoch-ticker", daemon=True)
        self._ticker.start()
        self.preparer = Preparer()
        self.tiering = TierUps()

    def _pool(self, component_bytes: int) -> str:
        s = self.settings
        if s.pooling and s.pool_resident_bytes and component_bytes >= s.resident_above_bytes:
            return RESIDENT
        return COPIED if component_bytes < s.copy_init_below_bytes else MAPPED

    def engine_for(self, component_bytes: int) -> wasmtime.Engine:
        """The wasmtime Engine a component of this size is compiled and instantiated in, with
        the settings' compiler."""
        key = (self.settings.compiler, self._pool(component_bytes))
        found = self._engines.get(key)
        if found is not None:
            return found
        with self._engines_lock:  # made on first use: a node may run only small components
            found = self._engines.get(key)
            if found is None:
                pool = key[1]
                keep = self.settings.pool_resident_bytes if pool == RESIDENT else 0
                found = _make_engine(self.settings, keep, key[0], copy_init=pool == COPIED)
                self._engines[key] = found
                self._tick_ptrs = (*self._tick_ptrs, capi.address(found))
            return found

    def artifact_tag(self, engine: wasmtime.Engine) -> str:
        """What sets `engine`'s compiled artifacts apart from those of the settings' other
        engines ("" for most): wasmtime refuses an artifact made with the memory image
        (copy-on-write) in an engine without it, and the other way round."""
        copied = any(e is engine for (_, pool), e in self._engines.items() if pool == COPIED)
        return "-copied" if copied else ""

    def baseline_code(self, make: Callable[[wasmtime.Engine], Code]) -> Code:
        """`make`'s Code, made in the baseline compiler's engine (made now if there is none),
        which lives as long as any Code made here does.

        Its pool keeps `pool_resident_bytes` of each slot resident, whatever the component's
        size: baseline code runs while its optimised code compiles on another thread of this
        process, and while another thread of a process runs, each copy-on-write fault of a
        fresh instance's memory costs a TLB shootdown (an interrupt to that core, waited for).
        The JS hello takes 185 such faults a request, 13 on resident slots: beside the compile
        its requests had p50 2.1 ms, now 1.05 ms (0.98 ms alone; see bench/shootdowns.py).

        The pool also reserves ~4 TiB of address space (the default 512 slots), for code that
        runs only until its tier-up. The Codes are what keeps the engine: every store holds its
        Code (capi.Store `keep`), and so do instances made ahead or reused; so once no Code is
        left, nothing of the engine is either, and the ticker closes it (_release_unused). The
        next tier-up makes a new one."""
        with self._engines_lock:
            held = self._baseline
            if held is None:
                keep = self.settings.pool_resident_bytes
                held = self._baseline = _Baseline(_make_engine(self.settings, keep, BASELINE))
                self._tick_ptrs = (*self._tick_ptrs, capi.address(held.engine))
                self.baseline_engines_made += 1
            held.making += 1  # the ticker must not close it before `make` has made its Code
        try:
            code = make(held.engine)
            held.codes.add(code)
            return code
        finally:
            with self._engines_lock:
                held.making -= 1

    @property
    def baseline_open(self) -> bool:
        """Whether the baseline engine is open now."""
        return self._baseline is not None

    def background_compiler(self, serving: wasmtime.Engine | None = None) -> wasmtime.Engine:
        """An Engine that only compiles, on one thread, for the tier-up worker: its artifacts
        suit `serving` (default: `engine`; the same code settings, the same memory
        initialization, see artifact_tag). Cranelift's parallel compile of a Python component
        takes both cores of a small node for ~3.5 s, and the requests served meanwhile wait
        for a core; on one it takes ~6.5 s, beside them."""
        copy_init = serving is not None and bool(self.artifact_tag(serving))
        with self._engines_lock:
            found = self._background.get(copy_init)
            if found is None:
                found = self._background[copy_init] = _make_engine(
                    replace(self.settings, pooling=False), 0, self.settings.compiler,
                    parallel=False, copy_init=copy_init,
                )  # fmt: skip
            return found

    def running(self) -> _Running:
        """Context manager around any wasm execution (instantiation included)."""
        return _Running(self)

    def _tick(self) -> None:
        interval = self.settings.epoch_tick_ms / 1000
        idle = 0
        seen = self._entries
        next_sweep = 0.0
        while not self._stop.is_set():
            if self._active or self._entries != seen:
                seen = self._entries
                idle = 0
            else:
                idle += 1
            if idle >= IDLE_TICKS:
                # Announce sleep before the last look: a call that starts after that look
                # sees `_awake` false and sets the event, so no wake-up is lost.
                self._awake = False
                self._work.clear()
                if not self._active:
                    self._work.wait(timeout=1.0)
                self._awake = True
                idle = 0
            # A plain sleep: Event.wait with a timeout costs several times as much per tick.
            time.sleep(interval)
            if self._stop.is_set():
                return
            if self._active:
                # Deadlines count from the current epoch when a call starts, so epochs that
                # pass while nothing runs do not matter.
                for engine in self._tick_ptrs:
                    capi.engine_increment_epoch(engine)
            if self._baseline is not None and time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + SWEEP_S
                self._release_unused()

    def _release_unused(self) -> None:
        """Closes the baseline engine if no Code (nor compile) uses it any more. Runs on the
        ticker thread, the only reader of `_tick_ptrs`: no tick is under way on it then."""
        self.sweeps += 1
        with self._engines_lock:
            held = self._baseline
            if held is None or held.making or held.codes:
                return
            self._baseline = None
            self._tick_ptrs = tuple(capi.address(e) for e in self._engines.values())
            self.baseline_engines_closed += 1
        # Outside the lock: this unmaps the pool. Stores, components and linkers hold their own
        # references to wasmtime's engine, so ours is the last one left here.
        held.engine.close()

    def deadline_ticks(self, deadline_ms: int) -> int:
        return ticks_for(deadline_ms, self.settings.epoch_tick_ms)

    def close(self) -> None:
        self.tiering.close()
        self.preparer.close()
        self._stop.set()
        self._work.set()
        if self._ticker.is_alive() and threading.current_thread() is not self._ticker:
            self._ticker.join(timeout=1)

    def __enter__(self) -> SandboxEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _make_engine(
    s: EngineSettings,
    keep_resident_bytes: int,
    compiler: str,
    parallel: bool = True,
    copy_init: bool = False,
) -> wasmtime.Engine:
    # The engines of one compiler get the same code settings, so one artifact suits any of them
    # (the allocator and the compile's threads are not code settings).
    config = wasmtime.Config()
    config.parallel_compilation = parallel
    config.wasm_component_model = True
    config.epoch_interruption = True
    config.max_wasm_stack = s.max_wasm_stack_bytes
    # wasmtime-py 50 names only "auto" and "cranelift"; its C API also has Winch.
    ffi.wasmtime_config_strategy_set(config.ptr(), COMPILERS[compiler])
    if copy_init:  # see EngineSettings.copy_init_below_bytes
        ffi.wasmtime_config_memory_init_cow_set(config.ptr(), False)
    if s.pooling:
        _enable_pooling(config, s, keep_resident_bytes)
    return wasmtime.Engine(config)


def _enable_pooling(config: wasmtime.Config, s: EngineSettings, keep_resident_bytes: int) -> None:
    # wasmtime-py 50 exposes the pooling allocator only through its raw C bindings.
    pool = ffi.wasmtime_pooling_allocation_config_new()
    try:
        ffi.wasmtime_pooling_allocation_config_total_component_instances_set(
            pool, s.pool_total_instances
        )
        # componentize-py and componentize-js components hold several core instances each.
        ffi.wasmtime_pooling_allocation_config_total_core_instances_set(
            pool, s.pool_total_instances * 8
        )
        ffi.wasmtime_pooling_allocation_config_total_memories_set(pool, s.pool_total_instances * 2)
        ffi.wasmtime_pooling_allocation_config_total_tables_set(pool, s.pool_total_instances * 8)
        ffi.wasmtime_pooling_allocation_config_max_memory_size_set(pool, s.pool_max_memory_bytes)
        ffi.wasmtime_pooling_allocation_config_max_unused_warm_slots_set(pool, s.pool_warm_slots)
        # Resident slots are reset by copying, which batching does not make cheaper; batched,
        # 32 freed slots of ~13 MiB each would wait resident (Python hello: RSS 313 vs 96 MiB).
        batch = 1 if keep_resident_bytes else s.pool_decommit_batch
        ffi.wasmtime_pooling_allocation_config_decommit_batch_size_set(pool, batch)
        ffi.wasmtime_pooling_allocation_config_linear_memory_keep_resident_set(
            pool, keep_resident_bytes
        )
        ffi.wasmtime_pooling_allocation_strategy_set(config.ptr(), pool)
    finally:
        ffi.wasmtime_pooling_allocation_config_delete(pool)


class _Running:
    __slots__ = ("engine",)

    def __init__(self, engine: SandboxEngine) -> None:
        self.engine = engine

    def __enter__(self) -> None:
        engine = self.engine
        engine._active.add(self)
        engine._entries += 1
        if not engine._awake:
            engine._work.set()

    def __exit__(self, *exc: object) -> None:
        self.engine._active.discard(self)
