"""The epoch ticker: bumps the epoch of each registered wasmtime engine every tick, which is
what makes a store's epoch deadline (and so a function's `deadline_ms`) pass.

Two of them, one interface. `NativeTicker` is a pthread in our C helper (native/ticker.c) that
never touches the interpreter; `PythonTicker` is a daemon Python thread, the fallback when the
helper cannot be built or loaded (no zig) or when `EngineSettings.ticker = "python"`. Under load
the Python one takes the GIL from the event loop every tick (~9 µs a request in a node serving the
C hello). Both sleep after IDLE_TICKS ticks in which no call started and none ran (an idle node,
or 50 of them on one machine, should not wake 500 times a second), and the first call to start
wakes them.

The request path brackets every wasm execution with `enter(token)` / `leave(token)`;
`remove(engine)` returns once no tick uses the engine, so it may be closed right after.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import time
import weakref
from collections.abc import Callable
from ctypes import c_int, c_size_t, c_uint64, c_void_p
from dataclasses import dataclass
from typing import Protocol

import wasmtime

from edge.sandbox import capi, native_build
from edge.sandbox.capi import bind, function_address

IDLE_TICKS = 250  # ticks without wasm before the ticker sleeps (0.5 s at 2 ms)
NATIVE = "native"
PYTHON = "python"
TICKERS = (NATIVE, PYTHON)


@dataclass(frozen=True)
class TickerStats:
    ticks: int  # ticks so far (each bumps every registered engine's epoch)
    sleeps: int  # times it fell asleep for want of calls
    asleep: bool
    running: int  # calls between enter and leave


class Ticker(Protocol):
    kind: str
    # For C callers (wire.c): the addresses of enter's and leave's C functions and of the
    # state they take; None when entering and leaving are Python's.
    c_calls: tuple[int, int, int] | None

    def add(self, engine: wasmtime.Engine) -> None: ...
    def remove(self, engine: wasmtime.Engine) -> None: ...
    def enter(self, token: object) -> None: ...
    def leave(self, token: object) -> None: ...
    def stats(self) -> TickerStats: ...
    def close(self) -> None: ...


class _Lib:
    """The helper's functions. enter and leave keep the GIL (a Python-API function type):
    dropping and retaking it would cost more than the two atomic adds they do."""

    def __init__(self, dll: ctypes.CDLL) -> None:
        self.dll = dll
        self.size = bind(dll, "edge_ticker_size", c_size_t, [])
        self.start = bind(dll, "edge_ticker_start", c_int, [c_void_p, c_void_p, c_uint64, c_uint64])
        self.add = bind(dll, "edge_ticker_add", c_int, [c_void_p, c_void_p])
        self.remove = bind(dll, "edge_ticker_remove", c_int, [c_void_p, c_void_p])
        self.stats = bind(dll, "edge_ticker_stats", None, [c_void_p, c_void_p])
        self.stop = bind(dll, "edge_ticker_stop", None, [c_void_p])
        fast = ctypes.PYFUNCTYPE(None, c_void_p)
        self.enter = fast(function_address(dll, "edge_ticker_enter"))
        self.leave = fast(function_address(dll, "edge_ticker_leave"))


class NativeTicker:
    kind = NATIVE

    def __init__(self, lib: _Lib, tick_ms: int, idle_ticks: int = IDLE_TICKS) -> None:
        # The C state lives in this Python buffer, zeroed and 8-aligned: whoever can still call
        # enter or leave holds this object, so no call lands in freed memory.
        self._state = (ctypes.c_uint64 * -(-lib.size() // 8))()
        self._ptr: int = ctypes.addressof(self._state)
        rc = lib.start(self._ptr, capi.increment_epoch_address, tick_ms * 1000, idle_ticks)
        if rc:
            raise OSError(rc, f"the native ticker's thread did not start: {os.strerror(rc)}")
        self._lib = lib
        self._enter = lib.enter
        self._leave = lib.leave
        self.c_calls: tuple[int, int, int] | None = (
            function_address(lib.dll, "edge_ticker_enter"),
            function_address(lib.dll, "edge_ticker_leave"),
            self._ptr,
        )
        # The engines it ticks, kept alive until removed: the thread holds only their addresses.
        self._engines: dict[int, wasmtime.Engine] = {}
        self._lock = threading.Lock()
        # Also at interpreter exit and when dropped unclosed: the thread stops (joined) before
        # the engines above or the state can be freed (a finalizer runs before attributes are
        # cleared, and holds the state until it has run).
        self._stop = weakref.finalize(self, lib.stop, self._state)

    def add(self, engine: wasmtime.Engine) -> None:
        address = capi.address(engine)
        with self._lock:
            rc = self._lib.add(self._ptr, address)
            if rc:
                raise OSError(rc, f"the native ticker did not take an engine: {os.strerror(rc)}")
            self._engines[address] = engine

    def remove(self, engine: wasmtime.Engine) -> None:
        address = capi.address(engine)
        with self._lock:
            self._lib.remove(self._ptr, address)
            self._engines.pop(address, None)

    def enter(self, token: object) -> None:
        self._enter(self._ptr)

    def leave(self, token: object) -> None:
        self._leave(self._ptr)

    def stats(self) -> TickerStats:
        out = (c_uint64 * 4)()
        self._lib.stats(self._ptr, out)
        return TickerStats(out[0], out[1], bool(out[2]), out[3])

    def close(self) -> None:
        with self._lock:  # not while an engine is added or removed
            self._stop()


class PythonTicker:
    kind = PYTHON
    c_calls: tuple[int, int, int] | None = None

    def __init__(self, tick_ms: int, idle_ticks: int = IDLE_TICKS) -> None:
        self._interval_s = tick_ms / 1000
        self._idle_ticks = idle_ticks
        self._engines: dict[int, wasmtime.Engine] = {}
        # Replaced whole under `_pass`, which each tick holds: remove() waits out a tick.
        self._addresses: tuple[int, ...] = ()
        self._pass = threading.Lock()
        # Running calls are tokens in a set (adding and discarding are atomic under the GIL, so
        # no lock per request); `_entries` only tells the thread that calls happened (a lost
        # increment does no harm).
        self._active: set[object] = set()
        self._entries = 0
        self._awake = True
        self._work = threading.Event()
        self._stop = threading.Event()
        self.ticks = 0
        self.sleeps = 0
        self._thread = threading.Thread(target=self._run, name="epoch-ticker", daemon=True)
        self._thread.start()

    def add(self, engine: wasmtime.Engine) -> None:
        with self._pass:
            self._engines[capi.address(engine)] = engine
            self._addresses = tuple(self._engines)

    def remove(self, engine: wasmtime.Engine) -> None:
        with self._pass:
            self._engines.pop(capi.address(engine), None)
            self._addresses = tuple(self._engines)

    def enter(self, token: object) -> None:
        self._active.add(token)
        self._entries += 1
        if not self._awake:
            self._work.set()

    def leave(self, token: object) -> None:
        self._active.discard(token)

    def stats(self) -> TickerStats:
        return TickerStats(self.ticks, self.sleeps, not self._awake, len(self._active))

    def _run(self) -> None:
        idle = 0
        seen = self._entries
        while not self._stop.is_set():
            if self._active or self._entries != seen:
                seen = self._entries
                idle = 0
            else:
                idle += 1
            if idle >= self._idle_ticks:
                # Announce sleep before the last look: a call that starts after that look
                # sees `_awake` false and sets the event, so no wake-up is lost.
                self._awake = False
                self._work.clear()
                if not self._active and self._entries == seen:
                    self.sleeps += 1
                    self._work.wait()
                self._awake = True
                idle = 0
                seen = self._entries
            # A plain sleep: Event.wait with a timeout costs several times as much per tick.
            time.sleep(self._interval_s)
            if self._stop.is_set():
                return
            if self._active:
                # Deadlines count from the current epoch when a call starts, so epochs that
                # pass while nothing runs do not matter.
                with self._pass:
                    for address in self._addresses:
                        capi.engine_increment_epoch(address)
                self.ticks += 1

    def close(self) -> None:
        self._stop.set()
        self._work.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=1)


def native_lib() -> _Lib | str:
    """The ticker helper, built if needed, loaded once per process; or why not (tried once)."""
    dll = native_build.load_helper("ticker")
    return dll if isinstance(dll, str) else _shared_lib(dll)


@functools.cache
def _shared_lib(dll: ctypes.CDLL) -> _Lib:
    return _Lib(dll)


def start_ticker(
    kind: str, tick_ms: int, load: Callable[[], _Lib | str] = native_lib
) -> tuple[Ticker, str]:
    """The ticker `kind` asks for, or the Python one if the native one is not available; and,
    when it fell back, why ("" otherwise). `load`: the helper, or why it is not available."""
    if kind == NATIVE:
        lib = load()
        if isinstance(lib, str):
            return PythonTicker(tick_ms), f"native ticker unavailable ({lib})"
        try:
            return NativeTicker(lib, tick_ms), ""
        except OSError as e:
            return PythonTicker(tick_ms), f"native ticker unavailable ({e})"
    return PythonTicker(tick_ms), ""
