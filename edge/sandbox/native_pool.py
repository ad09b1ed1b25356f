"""Native worker threads for fresh requests of functions without WASI (edge/sandbox/native/
invoke.c): the event loop queues a request and awaits it; a thread of the helper, which never
takes the GIL, runs it; an eventfd the loop watches says when requests are done.

The loop's side of a request is a future and a little Python under load (bench.hotpath
--concurrency: the node's app ~40 µs per request against the canned node's ~20): packing the
request, reading its answer and the pool's C calls go through wire.c where it was built (see
native_invoke.Wire), else through struct and ctypes (~20 µs more). Running it inline costs the
whole call on the loop's thread and a Python worker thread costs a thread hop (~180 µs of CPU,
mostly the GIL changing hands): so the loop serves HTTP on one core while functions run on the
others, and a slow function never holds the loop up. Only about one worker per core beside the
loop's is awake at once (EngineSettings.awake_workers): a request queued while they are busy
waits for one of them, which takes it without sleeping, unless it waited 1 ms (a slow function),
when one more is woken.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections.abc import Callable
from ctypes import c_int, c_size_t, c_void_p
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

from edge.errors import NodeOutOfMemory
from edge.sandbox import abi
from edge.sandbox.capi import bind, function_address
from edge.sandbox.native_invoke import ARGS, Call, Helper, Outcome, Wire
from edge.sandbox.ticker import Ticker

TAKE_AT_ONCE = 64  # finished jobs read per wake-up of the loop
KEEP_JOBS = 64  # job structs kept for reuse (one per request under way at once)
KEEP_BYTES = 256 * 1024  # a job's output buffers holding more are freed once read


# (callback, its argument), called as callback(argument, seconds the job ran): see run().
Ended = tuple[Callable[[Any, float], None], Any]


class PoolStats(NamedTuple):
    woken: int  # idle workers woken for a job as it was queued (fewer than awake_max awake)
    spared: int  # woken by the watcher for a job that waited 1 ms (the awake ones were busy)
    awake: int  # workers not idle now (a new pool's count down to 0 as its threads start)
    peak: int  # the most awake right after a wake-up


@dataclass(slots=True, eq=False)  # hashed by identity: the ticker keeps it in a set
class _Pending:
    future: asyncio.Future[Outcome]
    job: _Job
    blob: bytes  # read by the worker in place: alive until the job is done
    call: Call  # likewise its config, and its Code, whose pointers the job holds
    ended: Ended | None  # called on the future's loop once the job ends, given up or not


class _Job:
    """A struct edge_job: the request's arguments, then its outcome, then its output buffers
    (freed when the job object goes)."""

    __slots__ = ("address", "buffer", "release", "view")

    def __init__(self, size: int, release: Any) -> None:
        self.buffer = ctypes.create_string_buffer(size)
        self.address = ctypes.addressof(self.buffer)
        self.view = memoryview(self.buffer).cast("B")
        self.release = release

    def __del__(self) -> None:
        self.release(self.address)


class NativePool:
    """`ticker`: the engine's epoch ticker, kept awake from a job's queueing to its end,
    whether or not anyone still awaits it (a request given up runs on to its deadline).
    `awake_max` (≥ 1, engine.awake_workers): workers running at once before a queued job
    waits for one of them to finish; a job that waited 1 ms gets one more (invoke.c's watcher).
    `nice`: the workers' nice value (EngineSettings.worker_nice; 0: the process's)."""

    def __init__(
        self, helper: Helper, threads: int, ticker: Ticker, awake_max: int, nice: int = 0
    ) -> None:
        self._ticker = ticker
        self._wire = helper.wire
        dll = helper.dll
        self._submit = bind(dll, "edge_pool_submit", None, [c_void_p, c_void_p])
        self._take = bind(dll, "edge_pool_take", c_size_t, [c_void_p, c_void_p, c_size_t])
        self._stop = bind(dll, "edge_pool_stop", None, [c_void_p])
        self._free_pool = bind(dll, "edge_pool_free", None, [c_void_p])
        self._release = bind(dll, "edge_job_release", None, [c_void_p])
        self.held = bind(dll, "edge_job_held", c_size_t, [c_void_p])  # a job's buffers, bytes
        self._job_size = int(bind(dll, "edge_job_size", c_size_t, [])())
        size = int(bind(dll, "edge_pool_size", c_size_t, [])())
        self._state = (ctypes.c_uint64 * -(-size // 8))()
        self._ptr = ctypes.addressof(self._state)
        start = bind(dll, "edge_pool_start", c_int, [c_void_p, c_size_t, c_size_t, c_int])
        rc = start(self._ptr, threads, awake_max, nice)
        if rc:
            self._stop(self._ptr)
            self._free_pool(self._ptr)
            raise OSError(rc, f"the native worker threads did not start: {os.strerror(rc)}")
        self.eventfd = int(bind(dll, "edge_pool_eventfd", c_int, [c_void_p])(self._ptr))
        self._stats = bind(dll, "edge_pool_stats", None, [c_void_p, c_void_p])
        # With wire.c, the pool's and the ticker's C functions are called from there (see
        # _Direct), ctypes being most of their cost; the ticker's only when it is the native one.
        native = helper.wire.native
        self._direct = _Direct(dll, ticker, native) if native is not None else None
        self._taken = (c_void_p * TAKE_AT_ONCE)()
        self._taken_at = ctypes.addressof(self._taken)
        self._pending: dict[int, _Pending] = {}
        self._free: list[_Job] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # loops of other threads may run requests too
        self._closed = False

    def run(
        self, call: Call, req: abi.GuestRequest, ended: Ended | None = None
    ) -> asyncio.Future[Outcome]:
        """Queues `req`; the future, of the running event loop, has its outcome. `ended`
        (callback, argument) is called when the job is over, even when the future was cancelled
        (its request given up): until then a worker thread is still the job's."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:  # the engine is closing: nothing would run it
                raise RuntimeError("the native worker threads are stopped")
            if loop is not self._loop:
                self._watch(loop)
            job = self._free.pop() if self._free else _Job(self._job_size, self._release)
            blob = self._wire.pack(job, call, req)
            future: asyncio.Future[Outcome] = loop.create_future()
            pending = self._pending[job.address] = _Pending(future, job, blob, call, ended)
            direct = self._direct
            if direct is None or not direct.enter:
                self._ticker.enter(pending)
        if direct is None:
            self._submit(self._ptr, job.address)
        else:  # entering the ticker first, when it is the native one
            direct.wire.submit(self._ptr, job.address, direct.submit, direct.enter, direct.state)
        return future

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        # The loop serving requests now; a node has one for good, tests one per test. Jobs of
        # an earlier loop are answered through it while it runs (_done), dropped once closed.
        old, self._loop = self._loop, loop
        if old is not None and not old.is_closed():
            old.remove_reader(self.eventfd)
        loop.add_reader(self.eventfd, self._done)

    def _done(self) -> None:
        answers = []
        direct = self._direct
        with self._lock:
            if direct is None:
                n = self._take(self._ptr, self._taken_at, TAKE_AT_ONCE)
            else:
                n = direct.wire.take(self._ptr, self._taken_at, TAKE_AT_ONCE, direct.take)
            for address in self._taken[:n]:
                pending = self._pending.pop(address or 0)
                answer = _answer(self._wire, pending.job)
                answers.append((pending.future, answer, pending.ended))
                job = pending.job.address
                if direct is None or not direct.leave:
                    self._ticker.leave(pending)
                if direct is not None:  # leaves the native ticker too
                    direct.wire.done(job, direct.leave, direct.state, direct.held, direct.release,
                                     KEEP_BYTES)  # fmt: skip
                elif self.held(job) > KEEP_BYTES:
                    self._release(job)  # a large answer's copies go now
                if len(self._free) < KEEP_JOBS:
                    self._free.append(pending.job)
        try:  # a loop's reader callback, or close() on any thread
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for future, answer, ended in answers:
            # Not self._loop: another thread's loop may have taken the pool over since this
            # callback was due, and a future is only settled on its own loop's thread.
            loop = future.get_loop()
            if loop is here:
                _settle(future, answer, ended)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_settle, future, answer, ended)

    def stats(self) -> PoolStats:
        out = (ctypes.c_uint64 * 4)()
        self._stats(self._ptr, out)
        return PoolStats(*out)

    def close(self) -> None:
        """Runs the queued jobs, stops the threads, and answers the jobs' futures (those whose
        loops are still open)."""
        if self._closed:
            return
        self._closed = True
        self._stop(self._ptr)
        self._done()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.eventfd)
        self._free_pool(self._ptr)


class _Direct:
    """The C functions wire.c calls for the pool: its own (invoke.c) and, with the native
    ticker, the ticker's enter and leave (0 with the Python ticker, entered from Python)."""

    __slots__ = ("enter", "held", "leave", "release", "state", "submit", "take", "wire")

    def __init__(self, dll: ctypes.CDLL, ticker: Ticker, wire: ModuleType) -> None:
        self.wire: Any = wire  # the extension module: its functions are not typed
        self.submit = function_address(dll, "edge_pool_submit")
        self.take = function_address(dll, "edge_pool_take")
        self.held = function_address(dll, "edge_job_held")
        self.release = function_address(dll, "edge_job_release")
        self.enter, self.leave, self.state = ticker.c_calls or (0, 0, 0)


def _answer(wire: Wire, job: _Job) -> Outcome | BaseException:
    try:
        return wire.outcome(job, ARGS.size)
    except NodeOutOfMemory as e:  # the helper could not allocate its buffers
        return e


def _settle(
    future: asyncio.Future[Outcome], answer: Outcome | BaseException, ended: Ended | None
) -> None:
    if ended is not None:
        ran_ns = 0
        if isinstance(answer, Outcome) and answer.wall_ns[0]:  # instantiation's start to the end
            ran_ns = max(0, max(answer.wall_ns) - answer.wall_ns[0])
        ended[0](ended[1], ran_ns / 1e9)
    if future.cancelled():  # the request was given up (its client went away): the job ran on
        return
    if isinstance(answer, BaseException):
        future.set_exception(answer)
    else:
        future.set_result(answer)
