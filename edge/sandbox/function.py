"""A loaded function and its invocations: fresh instance per request, limits, typed errors.

`invoke` blocks; the node calls it from worker threads. wasmtime releases the GIL while wasm
runs (the calls go through ctypes), so a busy function does not stall the event loop.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import wasmtime
from wasmtime import _ffi as ffi

from edge.config.function import FunctionConfig
from edge.errors import (
    DeadlineExceeded,
    EdgeError,
    FunctionError,
    FunctionException,
    FunctionTrapped,
    InvalidResponse,
    MemoryLimitExceeded,
    NoResponse,
    ResponseTooLarge,
)
from edge.sandbox import abi, awaiting, capi, growcheck, host, native_invoke, prepare, stackmap
from edge.sandbox.code import Code, link
from edge.sandbox.compile_cache import CompileCache, content_hash
from edge.sandbox.engine import BASELINE, SandboxEngine


class OverBudget(Exception):
    """An invocation run with a short budget (inline on the event loop) did not finish in it.
    Nothing of it is visible: a fresh instance per request means re-running it elsewhere with
    the full deadline is safe (functions hold no capabilities that could have had effects)."""


@dataclass
class _Live:
    """One instantiated component in its own store; `store.close()` ends it. `func` is the
    address of its handler's `wasmtime_component_func_t`, kept alive by `func_owner`."""

    store: capi.Store
    func: int
    func_owner: object
    output: host.OutputRoute
    code: Code  # what it was instantiated from: one of an older tier is never served
    uses: int = 0


class _Scratch:
    """Per-thread C structs for one fresh request: instance handle, function, result val.
    Reusing them spares three ctypes allocations a request; a thread runs one call at a time."""

    def __init__(self) -> None:
        self.instance = ffi.wasmtime_component_instance_t()
        self.func = ffi.wasmtime_component_func_t()
        self.result = abi.Val()
        self.instance_at = ctypes.addressof(self.instance)
        self.func_at = ctypes.addressof(self.func)


_threads = threading.local()


def _scratch() -> _Scratch:
    found: _Scratch | None = getattr(_threads, "scratch", None)
    if found is None:
        found = _threads.scratch = _Scratch()
    return found


class LoadedFunction:
    """A compiled, checked, linked function. Loading raises ComponentRejected; never invoke."""

    def __init__(
        self,
        engine: SandboxEngine,
        cache: CompileCache,
        wasm: bytes,
        config: FunctionConfig,
        sink: host.LogSink,
    ) -> None:
        self.engine = engine
        self.config = config
        self.sink = sink
        self.digest = content_hash(wasm)
        self._deadline_ticks = engine.deadline_ticks(config.limits.deadline_ms)
        # A JS build's source map (kept undecoded until a log line needs it); every other
        # function links the plain log import. The mapper warns to the sink directly: the
        # tier-up's code holds it, and must not hold the function (see _queue_tier_up).
        stack = stackmap.StackMapper.for_component(wasm, partial(_warn, sink, self.name))
        self._log_write = (
            None if stack is None else host.mapped_log_write(stack, self._deadline_ticks)
        )
        self._code, tier_up = self._first_code(cache, wasm)
        self._configs: dict[int, tuple[Mapping[str, str], bytes]] = {}
        self._native = self._native_for(self._code)
        if stack is not None and not any(n.startswith("wasi:random/") for n in self._code.imports):
            self._warn(STALE_JS_BUILD)
        self._reuse_lock = threading.Lock()
        self._reused: _Live | None = None
        # Fresh instances made ahead of requests, once instantiation proves slow (see prepare).
        self._slot = prepare.Slot()
        self._prepared = False
        measure = engine.settings.prepare_instances and not config.instance.reuse
        self._instantiate_samples: list[float] | None = [] if measure else None
        self._warm_slot()
        if tier_up:  # last: the switch may come at once, and needs all of the above
            self._queue_tier_up(cache, wasm)

    @property
    def name(self) -> str:
        return self.config.name

    def _warn(self, message: str) -> None:
        _warn(self.sink, self.name, message)

    def _first_code(self, cache: CompileCache, wasm: bytes) -> tuple[Code, bool]:
        """The optimised code if the cache has it or it compiles fast; else the baseline code,
        and True: the optimised code is to be compiled in the background (see tiering)."""
        settings = self.engine.settings
        top = self.engine.engine_for(len(wasm))
        caps, tier, log_write = self.config.capabilities, settings.compiler, self._log_write
        if not settings.tiers_up or len(wasm) < settings.tier_up_above_bytes:
            loaded = cache.load(wasm, self.digest, top, self._warn)
            return link(top, loaded, caps, tier, log_write), False
        compiled = cache.cached(self.digest, top)
        if compiled is not None:
            return link(top, compiled, caps, tier, log_write), False

        def make(baseline: wasmtime.Engine) -> Code:
            compiled = cache.compile(wasm, baseline, self._warn)
            return link(baseline, compiled, caps, BASELINE, log_write)

        return self.engine.baseline_code(make), True

    def _warm_slot(self) -> None:
        """Instantiates and lets go where the code's engine keeps slots resident, so that the
        first requests do not pay a slot's first reset: closing the first store of a Python
        echo in a fresh slot took ~3,200 page faults (copy-on-write pages of the memory image
        written back over), on the request's path: first request 15 ms instead of 4 quiet,
        70-80 ms instead of 31 beside a compile on another thread of the node (each fault
        then a TLB shootdown). Elsewhere a freed slot's pages are dropped, so every request
        faults them in anyway. wasmtime 50 appears to split a pool's slots into one share per
        core and to give each thread one (on 2 cores a second thread's first instance took slot
        512 of 1,024, cold, beside the first thread's warm slot 0; with the process on one
        core, one share), so it runs once on each of up to `warm_up_threads` new threads, at
        most one per core: two new threads left every later thread warm on 2 cores. An
        instantiation that fails is left to requests to report."""
        if not self.engine.keeps_slots_resident(self._code.engine):
            return
        ticks = min(self._deadline_ticks, self.engine.deadline_ticks(WARM_UP_MS))

        def warm() -> None:
            try:
                with self.engine.running():
                    live = self._instantiate(ticks)
            except Exception:
                return
            live.store.close()

        for _ in range(min(len(os.sched_getaffinity(0)), self.engine.settings.warm_up_threads)):
            thread = threading.Thread(target=warm, name="warm-slot")
            thread.start()
            thread.join()

    def _queue_tier_up(self, cache: CompileCache, wasm: bytes) -> None:
        # Nothing here may hold the function: an unloaded one is skipped, not compiled for.
        top = self.engine.engine_for(len(wasm))
        digest, name, sink, tier = self.digest, self.name, self.sink, self.engine.settings.compiler
        caps, compile_in = self.config.capabilities, self.engine.background_compiler(top)
        log_write = self._log_write

        def compile_top() -> Code:  # its growcheck warnings were said at the first compile
            warn = partial(_warn, sink, name)
            compiled = cache.load(wasm, digest, top, warn, compile_in, say_unchecked=False)
            return link(top, compiled, caps, tier, log_write)

        def failed(e: Exception) -> None:
            text = e.message if isinstance(e, EdgeError) else f"{type(e).__name__}: {e}"
            _warn(sink, name, f"{tier} compile failed, serving {BASELINE} code on: {text}")

        self.engine.tiering.want(self, compile_top, failed)

    def switch(self, code: Code) -> None:
        """Runs `code` from the next request on (a tier-up, on the tier-up worker). Instances
        of the old code are never served: requests check each one's code as they take it (a
        reused one is closed then). The one made ahead is replaced here, so the next request
        finds one of the new code ready, and an idle reused one is closed: neither waits for
        a request to let go of the old code (and its engine, see SandboxEngine.baseline_code)."""
        self._native = self._native_for(code)
        self._code = code
        slot = self._slot
        with slot.cv:
            old, slot.ready = slot.ready, None
        if isinstance(old, _Live):
            self.engine.preparer.retire(old.store)
            self._want_one()
        if self._reuse_lock.acquire(blocking=False):  # else the request in it closes it
            try:
                reused, self._reused = self._reused, None
            finally:
                self._reuse_lock.release()
            if reused is not None:
                self.engine.preparer.retire(reused.store)

    def _native_for(self, code: Code) -> native_invoke.NativeCode | None:
        """What the native request path needs to run `code`, when it may: the helper is loaded,
        and the function imports no WASI and takes a fresh instance per request."""
        helper = self.engine.invoke_helper
        if helper is None or code.needs_wasi or self.config.instance.reuse:
            return None
        limits = self.config.limits
        return helper.code(code, limits.memory_limit_bytes, limits.response_body_limit_bytes)

    @property
    def tier(self) -> str:
        """The compiler whose code requests run now (see tiering)."""
        return self._code.tier

    @property
    def code_engine(self) -> wasmtime.Engine:
        """The engine the code requests run now was compiled for (see CompileCache.path_for)."""
        return self._code.engine

    @property
    def prepares_instances(self) -> bool:
        """Whether fresh instances are now made ahead of requests (see prepare)."""
        return self._prepared

    def _instantiate(self, ticks: int, own: bool = False) -> _Live:
        """`own`: the instance outlives this call or leaves this thread (reuse, prepared), so
        it gets its own function struct instead of the thread's scratch one."""
        scratch = _scratch()
        code = self._code  # read once: a tier-up may replace it meanwhile
        # Instantiation runs guest start code, so the deadline applies from here.
        store = capi.Store(code.engine_ptr, self.config.limits.memory_limit_bytes, ticks, code)
        try:
            output = host.OutputRoute()
            if code.needs_wasi:
                store.set_wasi(host.wasi_config(output))
            err = capi.linker_instantiate(
                code.linker_ptr, store.context, code.component_ptr, scratch.instance_at
            )
            if err:
                raise _classify(capi.error(err), self.config, "instantiating")
            owner = ffi.wasmtime_component_func_t() if own else scratch.func
            func = ctypes.addressof(owner) if own else scratch.func_at
            found = capi.instance_get_func(
                scratch.instance_at, store.context, code.index_ptr, func
            )
            assert found  # check_component verified the export
        except BaseException:
            store.close()
            raise
        return _Live(store, func, owner, output, code)

    def invoke(
        self,
        request: abi.GuestRequest,
        invocation: host.Invocation,
        budget_ticks: int | None = None,
    ) -> abi.GuestResponse:
        """Runs one request. With `budget_ticks` (shorter than the deadline) it raises
        OverBudget instead of DeadlineExceeded when the budget runs out."""
        ticks = self._deadline_ticks
        invocation.inline = budget_ticks is not None
        if budget_ticks is not None and budget_ticks < ticks:
            ticks = budget_ticks
        else:
            budget_ticks = None
        invocation.rerunnable = budget_ticks is not None
        with host.bound(invocation), self.engine.running():
            try:
                if not self.config.instance.reuse:
                    native = self._native
                    if native is not None and not self._prepared:
                        return self._native_fresh(native, request, invocation, ticks)
                    return self._call_once(self._fresh(ticks, invocation), request, invocation)
                return self._invoke_reusing(request, invocation, ticks)
            except DeadlineExceeded:
                if budget_ticks is not None:
                    raise OverBudget() from None
                raise

    def _fresh(self, ticks: int, invocation: host.Invocation) -> _Live:
        if self._prepared:
            live = self._take_prepared()
            if live is not None:
                capi.set_epoch_deadline(live.store.context, ticks)
                return live
            return self._instantiate_for(invocation, ticks)
        samples = self._instantiate_samples
        if samples is None:
            return self._instantiate_for(invocation, ticks)
        started = time.thread_time()
        live = self._instantiate_for(invocation, ticks)
        self._sample(samples, time.thread_time() - started)
        return live

    def _sample(self, samples: list[float], cpu_s: float) -> None:
        """Counts one instantiation's thread CPU time towards the prepare decision."""
        samples.append(cpu_s)
        if len(samples) >= prepare.SAMPLES:
            self._instantiate_samples = None
            if statistics.median(samples) * 1e6 >= self.engine.settings.prepare_above_us:
                self._prepared = True
                self._want_one()

    def _native_fresh(
        self,
        native: native_invoke.NativeCode,
        request: abi.GuestRequest,
        invocation: host.Invocation,
        ticks: int,
    ) -> abi.GuestResponse:
        """A fresh request in one call of the native helper: what `_fresh` and `_call_once`
        do, with the same metrics, spans and errors."""
        helper = self.engine.invoke_helper
        assert helper is not None  # else there would be no `native`
        call = self._call_for(native, ticks, invocation.config)
        return self.native_finish(helper.fresh(call, request), invocation)

    def pooled(self, config: Mapping[str, str]) -> native_invoke.Call | None:
        """What a request needs to run on the engine's native worker threads (see
        native_pool); None when it cannot (see _native_for)."""
        native = self._native
        if native is None or self._prepared:
            return None
        return self._call_for(native, self._deadline_ticks, config)

    def _call_for(
        self, native: native_invoke.NativeCode, ticks: int, config: Mapping[str, str]
    ) -> native_invoke.Call:
        measure = self._instantiate_samples is not None
        return native_invoke.Call(native, ticks, measure, self._packed_config(config))

    def _packed_config(self, config: Mapping[str, str]) -> bytes:
        # Packed once per mapping (a version's config: the same object request after request);
        # the mapping is kept with it, so its id is not reused meanwhile.
        found = self._configs.get(id(config))
        if found is None or found[0] is not config:
            if len(self._configs) >= 8:  # a node serves a version with one or two mappings
                self._configs.clear()
            found = self._configs[id(config)] = (config, native_invoke.pack_config(config))
        return found[1]

    def native_finish(
        self, out: native_invoke.Outcome, invocation: host.Invocation
    ) -> abi.GuestResponse:
        """The response, or the error, of a request the native helper ran."""
        host.replay(invocation, out.events, out.dropped)
        samples = self._instantiate_samples
        if out.stage == native_invoke.FAILED_INSTANTIATE:  # as in _instantiate_for: no instance
            raise _classify(capi.error(out.error), self.config, "instantiating")
        invocation.instantiate_s = out.instantiate_s
        marks = invocation.marks
        if marks is not None:
            marks += [("instantiate", *out.wall_ns[:2]), ("execute", *out.wall_ns[2:])]
        if samples is not None:
            self._sample(samples, out.instantiate_cpu_s)
        if out.stage == native_invoke.FAILED_CALL:
            raise self._call_failed(out.error, invocation)
        self._warn_pending(invocation)
        if out.bad_response is not None:
            raise self._bad_response(out.bad_response)
        if out.stage == native_invoke.FAILED_POST_RETURN:
            raise _classify(capi.error(out.error), self.config, "cleaning up")
        assert out.response is not None
        return _checked(out.response)

    def _instantiate_for(self, invocation: host.Invocation, ticks: int, own: bool = False) -> _Live:
        """`_instantiate` on a request's path: the request's metrics and spans see it."""
        started = time.perf_counter()
        marks = invocation.marks
        started_ns = time.time_ns() if marks is not None else 0
        live = self._instantiate(ticks, own)
        invocation.instantiate_s = time.perf_counter() - started
        if marks is not None:
            marks.append(("instantiate", started_ns, time.time_ns()))
        return live

    def _want_one(self) -> None:
        slot = self._slot
        with slot.cv:
            if slot.preparing or slot.ready is not None:
                return
            slot.preparing = True
        self.engine.preparer.want(self)

    def _take_prepared(self) -> _Live | None:
        slot = self._slot
        with slot.cv:
            # One request may wait for the instance in the making (it is further along than
            # a new one would be); others make their own rather than queue behind it.
            if slot.ready is None and slot.preparing and not slot.waiting:
                slot.waiting = True
                slot.cv.wait_for(
                    lambda: slot.ready is not None or not slot.preparing, prepare.WAIT_S
                )
                slot.waiting = False
            live, slot.ready = slot.ready, None
            start = not slot.preparing
            if start:
                slot.preparing = True
        if start:
            self.engine.preparer.want(self)
        assert live is None or isinstance(live, _Live)
        if live is not None and live.code is not self._code:  # made before a tier-up
            self.engine.preparer.retire(live.store)
            return None
        return live

    def refill(self) -> None:
        """Makes the ready instance; runs on the engine's preparer thread."""
        slot = self._slot
        live: _Live | None = None
        try:
            if self._prepared and slot.ready is None:
                with self.engine.running():
                    live = self._instantiate(self._deadline_ticks, own=True)
        except Exception:  # requests will instantiate (and report the error) themselves
            self._prepared = False
        with slot.cv:
            slot.preparing = False
            if live is not None and live.code is self._code:
                slot.ready = live
                live = None
            slot.cv.notify_all()
        if live is not None:  # made just before a tier-up
            self.engine.preparer.retire(live.store)

    def _invoke_reusing(
        self, request: abi.GuestRequest, invocation: host.Invocation, ticks: int
    ) -> abi.GuestResponse:
        # Never two requests in one instance: a request that finds it busy gets a fresh one.
        if not self._reuse_lock.acquire(blocking=False):
            return self._call_once(self._instantiate_for(invocation, ticks), request, invocation)
        try:
            live, self._reused = self._reused, None
            if live is not None and live.code is not self._code:  # made before a tier-up
                live.store.close()
                live = None
            if live is None:
                live = self._instantiate_for(invocation, ticks, own=True)
            capi.set_epoch_deadline(live.store.context, ticks)
            try:
                response = self._call(live, request, invocation)
            except BaseException:
                live.store.close()  # a reused instance never outlives a trap
                raise
            live.uses += 1
            if live.uses < self.config.instance.reuse_max_requests and live.code is self._code:
                self._reused = live
            else:
                live.store.close()
            return response
        finally:
            self._reuse_lock.release()

    def _call_once(
        self, live: _Live, request: abi.GuestRequest, invocation: host.Invocation
    ) -> abi.GuestResponse:
        try:
            return self._call(live, request, invocation)
        finally:
            if self._prepared:  # an expensive store is also expensive to tear down
                self.engine.preparer.retire(live.store)
            else:
                live.store.close()

    def _call(
        self, live: _Live, request: abi.GuestRequest, invocation: host.Invocation
    ) -> abi.GuestResponse:
        live.output.invocation = invocation
        invocation.flush_output = live.output.flush
        marks = invocation.marks
        started = time.time_ns() if marks is not None else 0
        try:
            return self._execute(live, request, invocation)
        finally:
            live.output.flush()
            if marks is not None:
                marks.append(("execute", started, time.time_ns()))

    def _execute(
        self, live: _Live, request: abi.GuestRequest, invocation: host.Invocation
    ) -> abi.GuestResponse:
        param = abi.LoweredRequest(request)
        result = _scratch().result
        func = live.func
        context = live.store.context
        err = capi.func_call(func, context, param.pointer, 1, ctypes.addressof(result), 1)
        if err:
            raise self._call_failed(err, invocation)
        self._warn_pending(invocation)
        try:
            response = abi.lift_response(result, self.config.limits.response_body_limit_bytes)
        except abi.AbiError as e:
            raise self._bad_response(e) from None
        err = capi.func_post_return(func, context)
        if err:
            raise _classify(capi.error(err), self.config, "cleaning up")
        return _checked(response)

    def _call_failed(self, err: int, invocation: host.Invocation) -> FunctionError:
        """The error for a call that returned wasmtime error `err` (taken over here)."""
        error = _classify(capi.error(err), self.config, "running")
        # The SDK reported an uncaught exception and trapped at once (edge.sandbox.uncaught),
        # or the JS engine found the handler's Promise could never settle (awaiting); the
        # sandbox's own kills (deadline, memory) still say what ended the request.
        if type(error) is FunctionTrapped:
            if invocation.uncaught is not None:
                return FunctionException(invocation.uncaught.type_name, invocation.request_id)
            if invocation.awaiting and error.message.endswith(UNREACHABLE):
                return NoResponse(invocation.request_id)
        return error

    @staticmethod
    def _warn_pending(invocation: host.Invocation) -> None:
        if invocation.wait_until_pending:
            invocation.log("warn", awaiting.WAIT_UNTIL_DROPPED, "platform")

    def _bad_response(self, e: abi.AbiError) -> FunctionError:
        if isinstance(e, abi.ResponseBodyOverLimit):
            return ResponseTooLarge(
                f"response body of at least {e.size} bytes exceeds the limit of "
                f"{self.config.limits.response_body_limit_bytes} bytes "
                "([limits] response_body_limit_bytes in edge.toml)"
            )
        return InvalidResponse(f"function returned an invalid response: {e}")


def _checked(response: abi.GuestResponse) -> abi.GuestResponse:
    # 1xx are interim answers, never the final one: the HTTP server would drop the
    # connection rather than send one.
    if not 200 <= response.status <= 599:
        raise InvalidResponse(
            f"function returned HTTP status {response.status}: a response's status must be "
            "200 to 599"
        )
    return response


# The longest a slot's warm-up instantiation may run (see _warm_slot): a start function that
# loops must not hold up a load by the whole of a long deadline.
WARM_UP_MS = 100

# The cause of a trap in guest code that gave up on purpose (C abort, the JS engine's).
UNREACHABLE = "wasm `unreachable` instruction executed"


# A JS build (it carries our source map section) made before componentize-js got its random and
# clock features: its engine snapshot repeats the build's randomness in every request.
STALE_JS_BUILD = (
    "built by an earlier edge: crypto.getRandomValues(), crypto.randomUUID() and Math.random() "
    "give the same values on every request, and Date.now() is the build time; build it again "
    "(edge build) and deploy the new build"
)


def _warn(sink: host.LogSink, function: str, message: str) -> None:
    sink(host.LogLine(function, "", "warn", message, "platform", time.time()))


def _classify(e: wasmtime.WasmtimeError, config: FunctionConfig, doing: str) -> FunctionError:
    text = str(e)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # wasmtime puts the cause last ("Caused by: ... wasm trap: unreachable"), the backtrace first;
    # only the cause is matched, as the backtrace has the guest's function names in it.
    cause = lines[-1] if lines else "unknown error"
    cause = cause.split(": ", 1)[1] if cause[:2].isdigit() or cause[:1].isdigit() else cause
    if "interrupt" in cause:
        return DeadlineExceeded(
            f"function exceeded its deadline of {config.limits.deadline_ms} ms while {doing} "
            "([limits] deadline_ms in edge.toml)"
        )
    # The key to raise is named last, so the cause stays next to the limit.
    key = "([limits] memory_limit_mib in edge.toml)"
    limit = f"its memory limit of {config.limits.memory_limit_bytes // (1024 * 1024)} MiB"
    # A refused memory.grow, turned into this trap by growcheck.
    if "unreachable" in cause and growcheck.is_check(capi.top_frame_name(e)):
        return MemoryLimitExceeded(
            f"function exceeded {limit} while {doing}: more memory was refused {key}"
        )
    # Instantiation: the memory the component starts with is over the limit.
    if "memory" in cause and ("limit" in cause or "minimum" in cause or "exceeds" in cause):
        return MemoryLimitExceeded(f"function exceeded {limit} while {doing}: {cause} {key}")
    return FunctionTrapped(f"function trapped while {doing}: {cause}")
