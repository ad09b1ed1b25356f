"""The wasmtime Engines of a node, their settings, and the epoch ticker behind deadlines.

Deadlines use epoch interruption (cheaper than fuel: one check per loop header and function
entry, no counting): a ticker thread bumps each engine's epoch every `epoch_tick_ms`, and each
store traps once its epoch deadline, set from the function's `deadline_ms`, passes. The ticker
is a native thread (our C helper, built with zig: see edge.sandbox.ticker), which runs beside
the requests without taking the GIL; where the helper cannot be built or loaded, a Python thread
does the same (`ticker_fallback` says why). Either sleeps while no wasm runs. Baseline engines
no code uses any more are closed by a sweeper thread that runs only while one exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from importlib.metadata import version
from typing import TYPE_CHECKING

import wasmtime
from wasmtime import _ffi as ffi

from edge.sandbox import growcheck, native_invoke, native_pool, waitclamp
from edge.sandbox.native_invoke import INVOKES
from edge.sandbox.prepare import Preparer
from edge.sandbox.ticker import NATIVE, TICKERS, Ticker, start_ticker
from edge.sandbox.tiering import TierUps

if TYPE_CHECKING:
    from edge.sandbox.code import Code

MIB = 1024 * 1024
# wasmtime's code generators, as its C API numbers them (wasmtime_strategy_t). Cranelift
# optimises; Winch, a baseline compiler, compiles a componentize-py component in 0.7 s instead
# of 3.5 s (componentize-js: 0.65 s instead of 4.2 s) for slower code: the `edge dev` loop.
COMPILERS = {"cranelift": 1, "winch": 2}
BASELINE = "winch"  # the tier a large component starts on while its optimised code compiles
# How often the sweeper looks for baseline engines nothing uses any more (see _release_unused).
SWEEP_S = 1.0


def _check(
    name: str, choices: Iterable[str], where: str, error: Callable[[str], Exception]
) -> None:
    if name not in choices:
        raise error(f"{where} must be one of {', '.join(choices)}, got {name!r}")


def check_compiler(
    name: str, where: str, error: Callable[[str], Exception] = ValueError
) -> None:
    """The one check of a compiler name, wherever it comes from: raises `error` (the type says
    whose fault it is: ConfigError for node.toml, UsageError for a command line) with
    "<where> must be one of cranelift, winch, got '<name>'"."""
    _check(name, sorted(COMPILERS), where, error)


def check_ticker(
    name: str, where: str, error: Callable[[str], Exception] = ValueError
) -> None:
    """As check_compiler, for the epoch ticker's kind."""
    _check(name, TICKERS, where, error)


def check_invoke(
    name: str, where: str, error: Callable[[str], Exception] = ValueError
) -> None:
    """As check_compiler, for the request path's kind (see native_invoke)."""
    _check(name, INVOKES, where, error)


@dataclass(frozen=True)
class EngineSettings:
    epoch_tick_ms: int = 2
    # "native" (a thread in our C helper), or "python" (the fallback, forced: for comparison).
    ticker: str = NATIVE
    # "native": functions without WASI (C) run each fresh request in one call of our C helper
    # (see native_invoke); "python" (the fallback, forced: for comparison) does it step by step.
    invoke: str = NATIVE
    workers: int = 16  # native threads running fresh requests of functions without WASI
    # Of those, how many run at once before a queued request waits for one of them (0: one per
    # core beside the event loop's, see awake_workers); a request that waited 1 ms gets another.
    # More only fight the loop for the cores: each wake-up is a futex call on the loop's thread
    # and two thread switches (bench.hotpath --concurrency).
    awake_workers: int = 0
    # Added to the nice value of the threads running requests (these and the node's Python
    # ones), so the event loop's thread (HTTP, health checks) goes first when functions keep
    # every core busy. On 2 cores, 10 vs 0 (2 runs each): /healthz beside 48 busy Python
    # requests median 2.4-2.5 ms (max 6-11) vs 6.5-7.6 (max 12-34); a C hello beside 64 C
    # loops 3.6-3.9 ms (max 6-10) vs 8.0-14.2 (max 47-62); the C hello alone under wrk 2,901
    # vs 2,782 req/s (8 alternating rounds). But below everything else at the process's
    # priority too, background compiles included (wasmtime's compile threads cannot be niced
    # from here): in the test suite a Python hello with a 100 ms deadline, instantiating beside
    # its own tier-up compile, ran out of its deadline twice. So 0 (as the process) by default.
    worker_nice: int = 0
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
    # Loading a function whose pool keeps slots resident warms slots from this many new
    # threads (at most one per core), so first requests skip a slot's first reset (Python
    # echo through a node: first answer 8.3 ms instead of 22.4, bench.first_request); each
    # holds ~25 MiB resident per Python function whether or not requests come. 0: off (see
    # LoadedFunction._warm_slot).
    warm_up_threads: int = 2

    def __post_init__(self) -> None:
        check_compiler(self.compiler, "compiler")
        check_ticker(self.ticker, "ticker")
        check_invoke(self.invoke, "invoke")

    @property
    def tiers_up(self) -> bool:
        """Whether large components start on the baseline compiler's code."""
        return self.tier_up and self.compiler != BASELINE

    def fingerprint(self) -> str:
        """What a serialized component depends on besides its bytes (compile cache key part)."""
        # Pool sizes do not change generated code; tunables that do are listed here.
        text = (
            f"wasmtime={version('wasmtime')};epoch=1;stack={self.max_wasm_stack_bytes};"
            f"growcheck={growcheck.VERSION};waitclamp={waitclamp.VERSION};"
            f"compiler={self.compiler}"
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _summary(kind: str, fallback: str) -> str:
    return f"{kind} ({fallback})" if fallback else kind


def awake_workers(configured: int) -> int:
    """Native workers running at once: `configured`, or one per core this process may use
    besides the event loop's (at least one)."""
    if configured > 0:
        return configured
    return max(1, len(os.sched_getaffinity(0)) - 1)


def lower_this_thread(increment: int) -> None:
    """Adds `increment` to the calling thread's nice value (at most 19). Best effort: lowering
    one's own priority needs no right, and a thread that cannot just runs as it did."""
    if increment <= 0:
        return
    with contextlib.suppress(OSError):
        tid = threading.get_native_id()
        nice = os.getpriority(os.PRIO_PROCESS, tid) + increment
        os.setpriority(os.PRIO_PROCESS, tid, min(19, nice))


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
    """Owns the Engines and the ticker. Close it once; closing twice is harmless.

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
        self._baseline_closing = 0  # given up by _release_unused, their close under way
        self._engines_lock = threading.Lock()
        self._background: dict[bool, wasmtime.Engine] = {}  # by copy_init
        self.baseline_engines_made = 0
        self.baseline_engines_closed = 0
        self.sweeps = 0  # the sweeper's looks for unused baseline engines (_release_unused)
        self._sweeping = False  # a sweeper thread runs (only while a baseline engine is open)
        self._stop = threading.Event()
        self.ticker: Ticker
        # Why the native ticker is not the one in use although asked for ("" when it is).
        self.ticker_fallback: str
        self.ticker, self.ticker_fallback = start_ticker(
            self.settings.ticker, self.settings.epoch_tick_ms
        )
        self.ticker.add(self.engine)
        # The native request path, or None; and why it is not in use although asked for.
        self.invoke_helper: native_invoke.Helper | None = None
        self.invoke_fallback = ""
        if self.settings.invoke == NATIVE:
            helper = native_invoke.load()
            if isinstance(helper, str):
                self.invoke_fallback = f"native invoke unavailable ({helper})"
            else:
                self.invoke_helper = helper
        self._workers: native_pool.NativePool | None = None
        self._pool_lock = threading.Lock()
        self.workers_fallback = ""
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
                self.ticker.add(found)
                self._engines[key] = found
            return found

    def keeps_slots_resident(self, engine: wasmtime.Engine) -> bool:
        """Whether `engine`'s pool keeps its slots' memory resident once their instance is
        gone: the resident pool's engines and the baseline one (see baseline_code)."""
        if not (self.settings.pooling and self.settings.pool_resident_bytes):
            return False
        held = self._baseline
        if held is not None and held.engine is engine:
            return True
        return self._pool_of(engine) == RESIDENT

    def artifact_tag(self, engine: wasmtime.Engine) -> str:
        """What sets `engine`'s compiled artifacts apart from those of the settings' other
        engines ("" for most): wasmtime refuses an artifact made with the memory image
        (copy-on-write) in an engine without it, and the other way round."""
        return "-copied" if self._pool_of(engine) == COPIED else ""

    def _pool_of(self, engine: wasmtime.Engine) -> str | None:
        """The pool kind of one of the settings' compiler's engines (None for others)."""
        # A copy: another thread may make an engine meanwhile (engine_for).
        for (_, pool), e in tuple(self._engines.items()):
            if e is engine:
                return pool
        return None

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
        left, nothing of the engine is either, and the sweeper closes it (_release_unused). The
        next tier-up makes a new one."""
        with self._engines_lock:
            held = self._baseline
            if held is None:
                keep = self.settings.pool_resident_bytes
                held = _Baseline(_make_engine(self.settings, keep, BASELINE))
                self.ticker.add(held.engine)
                self._baseline = held
                self.baseline_engines_made += 1
                if not self._sweeping:
                    self._sweeping = True
                    threading.Thread(
                        target=self._sweep, name="baseline-sweeper", daemon=True
                    ).start()
            held.making += 1  # the sweeper must not close it before `make` has made its Code
        try:
            code = make(held.engine)
            held.codes.add(code)
            return code
        finally:
            with self._engines_lock:
                held.making -= 1

    @property
    def baseline_open(self) -> bool:
        """Whether the baseline engine is open now: until a closed one's pool is unmapped."""
        return self._baseline is not None or self._baseline_closing > 0

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

    @property
    def ticker_summary(self) -> str:
        """The ticker in use, and why it is the Python one when the native one was asked for:
        "native", "python", or "python (native ticker unavailable (...))"."""
        return _summary(self.ticker.kind, self.ticker_fallback)

    @property
    def invoke_kind(self) -> str:
        """The request path C functions take: "native" or "python" (see native_invoke)."""
        return native_invoke.NATIVE if self.invoke_helper else native_invoke.PYTHON

    @property
    def invoke_summary(self) -> str:
        """As ticker_summary, for the request path."""
        return _summary(self.invoke_kind, self.invoke_fallback)

    @property
    def wire_summary(self) -> str:
        """Who packs native requests and reads their answers on the loop's thread: "native"
        (wire.c), "python (why)", or "off" without the native request path."""
        if self.invoke_helper is None:
            return "off"
        wire = self.invoke_helper.wire
        return _summary(wire.kind, wire.fallback)

    @property
    def notes(self) -> list[str]:
        """What a server (`edge node`, `edge dev`) says once at start when a native helper was
        asked for but Python does its work: deadlines still hold, and each request costs a
        little more."""
        notes = []
        if self.ticker_fallback:
            notes.append(f"epoch ticker: {self.ticker.kind}, {self.ticker_fallback}")
        if self.invoke_fallback:
            notes.append(f"invoke: python, {self.invoke_fallback}")
        if self.invoke_helper is not None and self.invoke_helper.wire.fallback:
            notes.append(f"wire: python, {self.invoke_helper.wire.fallback}")
        if self.workers_fallback:
            notes.append(f"workers: inline, {self.workers_fallback}")
        return notes

    @property
    def workers_summary(self) -> str:
        """Where C functions' fresh requests run: "native" (the worker threads), "inline (why)"
        when the threads did not start (the helper runs on the loop's thread), "off" without
        the native request path, "not started" before the first use (see start_workers)."""
        if self.invoke_helper is None:
            return "off"
        if self.workers_fallback:
            return _summary("inline", self.workers_fallback)
        return NATIVE if self._workers is not None else "not started"

    def start_workers(self) -> None:
        """Starts the native worker threads now rather than on the first request, so that a
        server can say at start when they cannot be had (`notes`)."""
        self.native_pool()

    def native_pool(self) -> native_pool.NativePool | None:
        """The native worker threads (made on first use), or None without the helper or when
        they could not be started (`workers_fallback` says why: requests then run the helper
        on the loop's thread, as cheap ones of other functions run)."""
        if self._workers is not None or self.invoke_helper is None or self.workers_fallback:
            return self._workers
        with self._pool_lock:
            if self._workers is None and not self.workers_fallback:
                try:
                    self._workers = native_pool.NativePool(
                        self.invoke_helper, self.settings.workers, self.ticker,
                        awake_workers(self.settings.awake_workers), self.settings.worker_nice,
                    )
                except OSError as e:
                    self.workers_fallback = f"native workers unavailable ({e})"
            return self._workers

    def running(self) -> _Running:
        """Context manager around any wasm execution (instantiation included)."""
        return _Running(self.ticker)

    def _sweep(self) -> None:
        # Once a second: a look costs a lock and a weak set's length, and the engine's address
        # space waits a second longer at most.
        while not self._stop.wait(SWEEP_S):
            if not self._release_unused():
                return

    def _release_unused(self) -> bool:
        """Closes the baseline engine if no Code (nor compile) uses it any more. Returns whether
        one is still open; if not, the sweeper stops (the next baseline engine starts one)."""
        with self._engines_lock:
            self.sweeps += 1
            held = self._baseline
            if held is not None and (held.making or held.codes):
                return True
            self._sweeping = False
            if held is None:
                return False
            self._baseline = None
            self._baseline_closing += 1
        # Outside the lock: this unmaps the pool. Stores, components and linkers hold their own
        # references to wasmtime's engine, so ours is the last one left here; the ticker lets go
        # of it first (remove waits out a tick under way).
        try:
            self.ticker.remove(held.engine)
            held.engine.close()
        finally:
            with self._engines_lock:
                self._baseline_closing -= 1
                self.baseline_engines_closed += 1
        return False

    def deadline_ticks(self, deadline_ms: int) -> int:
        return ticks_for(deadline_ms, self.settings.epoch_tick_ms)

    def close(self) -> None:
        if self._workers is not None:
            self._workers.close()
        self.tiering.close()
        self.preparer.close()
        self._stop.set()
        self.ticker.close()

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
    __slots__ = ("ticker",)

    def __init__(self, ticker: Ticker) -> None:
        self.ticker = ticker

    def __enter__(self) -> None:
        self.ticker.enter(self)

    def __exit__(self, *exc: object) -> None:
        self.ticker.leave(self)
