"""The native worker threads (edge.sandbox.native_pool) in process: the same answers and typed
errors as the call on the loop's thread, slow functions beside fast ones, requests given up,
and event loops that come and go."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.config.function import load_function_config
from edge.errors import DeadlineExceeded, FunctionTrapped, MemoryLimitExceeded
from edge.sandbox import abi, host
from edge.sandbox.compile_cache import CompileCache
from edge.sandbox.engine import EngineSettings, SandboxEngine, awake_workers
from edge.sandbox.function import LoadedFunction
from edge.sandbox.native_invoke import FAILED_CALL, NATIVE, PYTHON, Outcome, Wire
from edge.sandbox.native_pool import KEEP_BYTES, KEEP_JOBS, NativePool

from .conftest import COMPILED, EXAMPLES, FIXTURES, thread_nices

pytestmark = pytest.mark.toolchain

Load = Callable[[Path], LoadedFunction]
REQUEST = abi.GuestRequest(
    "GET", "http://example.com/", [("host", "example.com")], b"", "127.0.0.1", "local", "n",
    "req-pool", abi.Geo(),
)  # fmt: skip


def python_wire(engine: SandboxEngine, wire: str) -> SandboxEngine:
    """`engine` with its pool (not made yet) on the Python wire when `wire` is "python": packing
    and reading in Python, the pool's and ticker's functions through ctypes (as without the
    extension)."""
    if wire == PYTHON:
        assert engine.invoke_helper is not None and engine.workers_summary == "not started"
        engine.invoke_helper = copy.copy(engine.invoke_helper)  # the loaded one is shared
        engine.invoke_helper.wire = Wire(None, "the test's choice")
    assert engine.wire_summary.split(" ")[0] == wire
    return engine


@pytest.fixture(scope="module", params=[NATIVE, PYTHON])
def engine(request: pytest.FixtureRequest) -> Iterator[SandboxEngine]:
    with SandboxEngine(EngineSettings(pool_total_instances=16, workers=4)) as e:
        yield python_wire(e, request.param)


@pytest.fixture
def load(engine: SandboxEngine, built: Callable[[Path], Path]) -> Load:
    def go(project: Path) -> LoadedFunction:
        wasm = built(project).read_bytes()
        config = load_function_config(project)
        return LoadedFunction(engine, CompileCache(engine, COMPILED), wasm, config, print)

    return go


def pool_of(engine: SandboxEngine) -> NativePool:
    pool = engine.native_pool()
    assert pool is not None
    return pool


async def run(pool: NativePool, fn: LoadedFunction, req: abi.GuestRequest) -> abi.GuestResponse:
    pooled = fn.pooled(fn.config.config)
    assert pooled is not None
    invocation = host.Invocation(fn.name, req.request_id, fn.config.config, print)
    return fn.native_finish(await pool.run(pooled, req), invocation)


def test_answers_as_the_call_on_this_thread(engine: SandboxEngine, load: Load) -> None:
    echo = load(EXAMPLES / "c" / "echo")
    req = abi.GuestRequest(
        "POST", "http://example.com/ü", [("x-a", "✓")] * 40, bytes(range(256)), "::1", "r",
        "n", "req-echo", abi.Geo("GB", None, "London", 51.5, None),
    )  # fmt: skip

    async def both() -> list[abi.GuestResponse]:
        return await asyncio.gather(*(run(pool_of(engine), echo, req) for _ in range(20)))

    here = echo.invoke(req, host.Invocation(echo.name, req.request_id, {}, print))
    assert all(r == here for r in asyncio.run(both()))


@pytest.mark.parametrize(
    ("fixture", "error"),
    [("loop", DeadlineExceeded), ("trap", FunctionTrapped), ("membomb", MemoryLimitExceeded)],
)
def test_hostile_functions_get_their_typed_errors(
    engine: SandboxEngine, load: Load, fixture: str, error: type[Exception]
) -> None:
    fn = load(FIXTURES / "functions" / fixture)
    with pytest.raises(error):
        asyncio.run(run(pool_of(engine), fn, REQUEST))


def test_a_slow_function_does_not_hold_up_a_fast_one(engine: SandboxEngine, load: Load) -> None:
    loop_fn, hello = load(FIXTURES / "functions" / "loop"), load(EXAMPLES / "c" / "hello")
    finished: list[str] = []

    async def go() -> None:
        async def one(name: str, fn: LoadedFunction) -> None:
            with contextlib.suppress(DeadlineExceeded):
                await run(pool_of(engine), fn, REQUEST)
            finished.append(name)

        slow = [asyncio.create_task(one("loop", loop_fn)) for _ in range(2)]
        await asyncio.sleep(0.01)  # both loops are running on two of the four threads
        await one("hello", hello)
        await asyncio.gather(*slow)

    asyncio.run(go())
    assert finished == ["hello", "loop", "loop"]


def test_a_request_given_up_leaves_nothing_behind(engine: SandboxEngine, load: Load) -> None:
    loop_fn, hello = load(FIXTURES / "functions" / "loop"), load(EXAMPLES / "c" / "hello")
    pool = pool_of(engine)

    async def go() -> bytes:
        task = asyncio.create_task(run(pool, loop_fn, REQUEST))
        await asyncio.sleep(0.01)
        task.cancel()  # as when the client goes away: the job runs on to its deadline
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)  # past the loop fixture's deadline (100 ms)
        return (await run(pool, hello, REQUEST)).body

    assert asyncio.run(go()) == b"Hello from C!\n"
    assert not pool._pending


def test_a_job_says_when_it_ended_even_when_given_up(engine: SandboxEngine, load: Load) -> None:
    """The node's fair share counts a worker as taken until the job's end (edge.node.admission):
    a request given up must not hand its worker back while its function still runs there."""
    loop_fn, hello = load(FIXTURES / "functions" / "loop"), load(EXAMPLES / "c" / "hello")
    pooled, fast = loop_fn.pooled({}), hello.pooled({})
    assert pooled is not None and fast is not None
    pool = pool_of(engine)
    ended: list[tuple[str, float, float]] = []

    def end(key: str, ran_s: float) -> None:
        ended.append((key, time.monotonic(), ran_s))

    async def go() -> float:
        given_up = pool.run(pooled, REQUEST, (end, "loop"))
        await asyncio.sleep(0.01)
        given_up.cancel()  # as when its request is given up
        cancelled_at = time.monotonic()
        assert (await pool.run(fast, REQUEST, (end, "hello"))).stage != FAILED_CALL
        while len(ended) < 2:
            await asyncio.sleep(0.01)
        return cancelled_at

    cancelled_at = asyncio.run(go())
    assert [key for key, _, _ in ended] == ["hello", "loop"]  # the loop's at its deadline
    assert ended[1][1] - cancelled_at >= 0.05  # its 100 ms deadline, not the cancel
    # How long each ran on its worker: the loop to its deadline, the hello far less.
    assert ended[1][2] >= 0.09 and 0 < ended[0][2] < 0.09, ended


@pytest.mark.parametrize("wire", [NATIVE, PYTHON])
@pytest.mark.parametrize("ticker", [NATIVE, PYTHON])
def test_a_job_keeps_the_epoch_ticker_awake_until_it_ends(
    built: Callable[[Path], Path], ticker: str, wire: str
) -> None:
    settings = EngineSettings(pool_total_instances=4, workers=1, ticker=ticker)
    with SandboxEngine(settings) as engine:
        assert engine.ticker.kind == ticker
        python_wire(engine, wire)
        pooled = loaded(engine, built, FIXTURES / "functions" / "loop").pooled({})
        assert pooled is not None
        deadline = time.monotonic() + 10
        while not engine.ticker.stats().asleep:  # no wasm ran for a while: the ticker sleeps
            assert time.monotonic() < deadline
            time.sleep(0.05)

        async def go() -> Outcome:  # nothing but the pool itself wakes the ticker here
            return await asyncio.wait_for(pool_of(engine).run(pooled, REQUEST), 5)

        started = time.monotonic()
        assert asyncio.run(go()).stage == FAILED_CALL  # its deadline (100 ms) trapped it
        assert time.monotonic() - started < 2
        assert engine.ticker.stats().running == 0


def test_event_loops_come_and_go(engine: SandboxEngine, load: Load) -> None:
    hello = load(EXAMPLES / "c" / "hello")
    for _ in range(3):  # a new loop each time, as tests and `edge dev` reloads make
        assert asyncio.run(run(pool_of(engine), hello, REQUEST)).status == 200
    answers: list[int] = []  # and a loop on another thread
    thread = threading.Thread(
        target=lambda: answers.append(asyncio.run(run(pool_of(engine), hello, REQUEST)).status)
    )
    thread.start()
    thread.join(timeout=30)
    assert answers == [200]


def test_a_loop_that_lost_the_pool_to_another_still_gets_its_answers(
    engine: SandboxEngine, load: Load
) -> None:
    loop_fn, hello = load(FIXTURES / "functions" / "loop"), load(EXAMPLES / "c" / "hello")
    pool = pool_of(engine)
    queued, answered = threading.Event(), threading.Event()
    seen: list[str] = []

    async def slow() -> None:  # on its own thread's loop, which watches the pool first
        pooled = loop_fn.pooled(loop_fn.config.config)
        assert pooled is not None
        job = pool.run(pooled, REQUEST)  # queued (and this loop watching) when it returns
        queued.set()
        try:
            outcome = await job
        except BaseException as e:
            seen.append(repr(e))
        else:
            seen.append(f"stage {outcome.stage}")
        answered.set()

    async def fast() -> None:  # this loop takes the pool over while the slow job runs
        assert queued.wait(10)
        assert (await run(pool, hello, REQUEST)).status == 200
        seen.append("hello")
        assert pool._loop is asyncio.get_running_loop()
        await asyncio.to_thread(answered.wait, 10)  # the slow job ends on this loop's watch

    other = threading.Thread(target=lambda: asyncio.run(slow()))
    other.start()
    asyncio.run(fast())
    other.join(timeout=10)
    assert seen == ["hello", f"stage {FAILED_CALL}"]  # the deadline's trap, as an outcome


def test_host_imports_on_the_pool(engine: SandboxEngine, load: Load) -> None:
    fn = load(EXAMPLES / "c" / "config")
    lines: list[host.LogLine] = []
    invocation = host.Invocation(fn.name, "req-config", {"greeting": "Grüß dich"}, lines.append)
    pooled = fn.pooled(invocation.config)
    assert pooled is not None

    async def go() -> abi.GuestResponse:
        return fn.native_finish(await pool_of(engine).run(pooled, REQUEST), invocation)

    started = time.time()
    resp = asyncio.run(go())
    assert "Grüß dich".encode() in resp.body
    assert [(line.source, line.request_id) for line in lines] == [("log", "req-config")]
    assert started <= lines[0].time_unix <= time.time()  # when it was written, not replayed


def test_closing_runs_the_queued_jobs_and_answers_them(built: Callable[[Path], Path]) -> None:
    project = EXAMPLES / "c" / "hello"
    with SandboxEngine(EngineSettings(pool_total_instances=8, workers=1)) as engine:
        pooled = loaded(engine, built, project).pooled({})
        assert pooled is not None
        pool = pool_of(engine)

        async def queue_and_close() -> list[asyncio.Future[Outcome]]:
            futures = [pool.run(pooled, REQUEST) for _ in range(50)]
            pool.close()  # its one thread runs all 50 first
            return futures

        futures = asyncio.run(queue_and_close())
        statuses = [f.result().response.status for f in futures]  # type: ignore[union-attr]
        assert statuses == [200] * 50
        assert not pool._pending


@pytest.mark.parametrize("where", ["pool", "this thread"])
def test_log_lines_keep_the_caps_and_order(engine: SandboxEngine, load: Load, where: str) -> None:
    fn = load(FIXTURES / "functions" / "logs")
    lines: list[host.LogLine] = []
    invocation = host.Invocation(fn.name, "req-logs", fn.config.config, lines.append)
    if where == "pool":
        pooled = fn.pooled(invocation.config)
        assert pooled is not None

        async def go() -> abi.GuestResponse:
            return fn.native_finish(await pool_of(engine).run(pooled, REQUEST), invocation)

        resp = asyncio.run(go())
    else:
        resp = fn.invoke(REQUEST, invocation)
    invocation.report_dropped()
    assert resp.body == b"hej"
    first, *numbered, last = lines
    assert first.level == "error" and first.message == "a" + "😀" * 4095 + "…(truncated)"
    assert [line.message for line in numbered] == [f"line {i}" for i in range(1, 200)]
    assert last.source == "platform" and last.message.startswith("51 log lines dropped")
    assert all(a.time_unix <= b.time_unix for a, b in itertools.pairwise(lines))


def test_a_job_serves_on_after_a_large_answer_freed_its_buffers(
    engine: SandboxEngine, load: Load
) -> None:
    mirror = load(FIXTURES / "functions" / "mirror")
    pool = pool_of(engine)
    body = bytes(range(256)) * 4096  # 1 MiB, every byte value
    req = abi.GuestRequest("POST", "http://x/", [], body, "::1", "r", "n", "req-big", abi.Geo())

    async def go() -> list[bytes]:
        big = await run(pool, mirror, req)
        small = await run(pool, mirror, REQUEST)
        return [big.body, small.body]

    assert asyncio.run(go()) == [body, b""]
    assert len(pool._free) <= KEEP_JOBS
    # Its buffers were freed once read (the small answer after it may have used another job),
    # while a job that answered ~100 KiB keeps its buffers for the next request.
    assert all(pool.held(job.address) <= KEEP_BYTES for job in pool._free)
    pool._free.clear()
    mid = abi.GuestRequest("POST", "http://x/", [], body[: 100 * 1024], "::1", "r", "n", "req-mid",
                           abi.Geo())  # fmt: skip
    assert asyncio.run(run(pool, mirror, mid)).body == mid.body
    assert [pool.held(job.address) >= 100 * 1024 for job in pool._free] == [True]


def test_threads_that_do_not_start_leave_requests_on_this_thread(
    monkeypatch: pytest.MonkeyPatch, built: Callable[[Path], Path]
) -> None:
    def refuse(*_: object) -> None:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(NativePool, "__init__", refuse)
    with SandboxEngine(EngineSettings(pool_total_instances=4)) as engine:
        assert engine.workers_summary == "not started" and engine.notes == []
        engine.start_workers()  # as a server does before it says its notes
        assert engine.native_pool() is None
        assert engine.workers_fallback.startswith("native workers unavailable (")
        why = "native workers unavailable ([Errno 11] Resource temporarily unavailable)"
        assert engine.workers_summary == f"inline ({why})"
        assert engine.notes == [f"workers: inline, {why}"]
        hello = loaded(engine, built, EXAMPLES / "c" / "hello")  # the app then calls invoke
        assert call_here(hello).body == b"Hello from C!\n"


def test_a_stopped_pool_refuses_new_requests(built: Callable[[Path], Path]) -> None:
    with SandboxEngine(EngineSettings(pool_total_instances=4, workers=1)) as engine:
        pool = pool_of(engine)
        pool.close()
        pooled = loaded(engine, built, EXAMPLES / "c" / "hello").pooled({})
        assert pooled is not None

        async def go() -> None:
            pool.run(pooled, REQUEST)

        with pytest.raises(RuntimeError, match="native worker threads are stopped"):
            asyncio.run(go())


def loaded(engine: SandboxEngine, built: Callable[[Path], Path], project: Path) -> LoadedFunction:
    wasm, config = built(project).read_bytes(), load_function_config(project)
    return LoadedFunction(engine, CompileCache(engine, COMPILED), wasm, config, print)


def call_here(fn: LoadedFunction) -> abi.GuestResponse:
    return fn.invoke(REQUEST, host.Invocation(fn.name, REQUEST.request_id, {}, print))


def settled(pool: NativePool) -> None:
    """Until every worker of a new pool has gone idle (they start awake)."""
    deadline = time.monotonic() + 5
    while pool.stats().awake and time.monotonic() < deadline:
        time.sleep(0.001)
    assert pool.stats().awake == 0


def test_jobs_queued_while_the_awake_workers_run_wait_for_them(
    built: Callable[[Path], Path],
) -> None:
    # One awake worker of four: a burst of requests is served by it, one after the other,
    # instead of waking a thread per request; only a job that waited 1 ms gets another.
    with SandboxEngine(EngineSettings(pool_total_instances=16, workers=4, awake_workers=1)) as e:
        pool, hello = pool_of(e), loaded(e, built, EXAMPLES / "c" / "hello")
        settled(pool)

        async def burst() -> list[abi.GuestResponse]:
            return await asyncio.gather(*(run(pool, hello, REQUEST) for _ in range(12)))

        assert {r.body for r in asyncio.run(burst())} == {b"Hello from C!\n"}
        stats = pool.stats()
        assert stats.woken >= 1
        # More than one awake only through the watcher (a slow machine: a job waited 1 ms).
        assert stats.peak <= 1 + stats.spared
        settled(pool)


def test_a_slow_function_on_the_only_awake_worker_does_not_hold_up_a_fast_one(
    built: Callable[[Path], Path],
) -> None:
    with SandboxEngine(EngineSettings(pool_total_instances=16, workers=4, awake_workers=1)) as e:
        pool = pool_of(e)
        loop_fn, hello = (loaded(e, built, p) for p in (FIXTURES / "functions" / "loop",
                                                         EXAMPLES / "c" / "hello"))  # fmt: skip
        settled(pool)
        finished: list[str] = []

        async def go() -> float:
            async def slow() -> None:
                with contextlib.suppress(DeadlineExceeded):
                    await run(pool, loop_fn, REQUEST)
                finished.append("loop")

            task = asyncio.create_task(slow())
            await asyncio.sleep(0.01)  # the loop runs on the one awake worker
            started = time.monotonic()
            assert (await run(pool, hello, REQUEST)).body == b"Hello from C!\n"
            finished.append("hello")
            waited = time.monotonic() - started
            await task
            return waited

        waited = asyncio.run(go())
        assert finished == ["hello", "loop"]
        assert waited < 0.05  # the watcher's 1 ms and a fresh instance; the loop runs 100 ms
        assert pool.stats().spared >= 1


def test_the_watcher_wakes_one_spare_worker_per_interval(built: Callable[[Path], Path]) -> None:
    # Four slow jobs at once, one awake worker of four: each queued job has waited 1 ms by the
    # time the watcher first looks, but it wakes one worker a millisecond (invoke.c's
    # SPARE_AFTER_NS), not all idle ones at once: a burst of slow jobs must not wake every
    # thread of the pool together. Seen from here a spare can only come later than it happened,
    # so the third cannot be seen before 3 ms after the jobs were queued.
    spare_after_s = 0.001
    with SandboxEngine(EngineSettings(pool_total_instances=16, workers=4, awake_workers=1)) as e:
        pool = pool_of(e)
        loop_fn = loaded(e, built, FIXTURES / "functions" / "loop")  # runs to its 100 ms deadline
        settled(pool)
        seen: dict[int, float] = {}

        async def go() -> None:
            with pytest.raises(DeadlineExceeded):  # the first request's setup out of the way
                await run(pool, loop_fn, REQUEST)
            queued = time.monotonic()
            tasks = [asyncio.ensure_future(run(pool, loop_fn, REQUEST)) for _ in range(4)]
            await asyncio.sleep(0)  # every task has queued its job
            while len(seen) < 3 and time.monotonic() - queued < 0.09:  # the jobs run 100 ms
                spared = pool.stats().spared
                for n in range(1, spared + 1):
                    seen.setdefault(n, time.monotonic() - queued)
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                assert isinstance(outcome, DeadlineExceeded)

        asyncio.run(go())
        stats = pool.stats()
        assert stats.spared == 3 and stats.peak == 4  # every job ran at once in the end
        for n in (1, 2, 3):
            assert seen[n] >= n * spare_after_s, seen
        settled(pool)


def test_awake_workers_default_to_the_cores_beside_the_loops() -> None:
    assert awake_workers(3) == 3
    assert awake_workers(0) == max(1, len(os.sched_getaffinity(0)) - 1)


def test_the_workers_run_below_the_loops_priority(built: Callable[[Path], Path]) -> None:
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    before = set(thread_nices())
    settings = EngineSettings(pool_total_instances=4, workers=3, worker_nice=7)
    with SandboxEngine(settings) as engine:
        pool = pool_of(engine)
        pooled = loaded(engine, built, EXAMPLES / "c" / "hello").pooled({})
        assert pooled is not None

        async def go() -> Outcome:
            return await pool.run(pooled, REQUEST)

        assert asyncio.run(go()).stage != FAILED_CALL
        started = {tid: nice for tid, nice in thread_nices().items() if tid not in before}
    assert sorted(started.values()).count(min(19, base + 7)) == 3, started  # the workers
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # not this one
