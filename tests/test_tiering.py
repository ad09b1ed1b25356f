"""Tier-up in process: a large component not in the compile cache serves Winch code at once and
switches to Cranelift code compiled in the background, with no failed request and the same
limits on both tiers."""

from __future__ import annotations

import gc
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

import pytest

from edge.config.function import InstancePolicy, load_function_config
from edge.errors import ComponentRejected, DeadlineExceeded, MemoryLimitExceeded
from edge.sandbox import abi, capi, host
from edge.sandbox.compile_cache import CompileCache
from edge.sandbox.engine import EngineSettings, SandboxEngine
from edge.sandbox.function import LoadedFunction

from .conftest import EXAMPLES, FIXTURES, with_deadline

pytestmark = pytest.mark.toolchain

TIER_UP_BOUND_S = 180  # a Cranelift compile of a Python component: ~4 s alone, more when shared
MAX_REQUESTS = 50_000


@pytest.fixture
def engine() -> Iterator[SandboxEngine]:
    with SandboxEngine(EngineSettings(pool_total_instances=64)) as e:
        yield e


Loader = Callable[..., LoadedFunction]


@pytest.fixture
def load(
    engine: SandboxEngine,
    tmp_path: Path,
    built: Callable[[Path], Path],
    lines: list[host.LogLine],
) -> Loader:
    cache = CompileCache(engine, tmp_path / "compiled")  # empty: nothing compiled before

    def go(project: Path, deadline_ms: int | None = None) -> LoadedFunction:
        wasm = built(project).read_bytes()
        config = load_function_config(project)
        if deadline_ms is not None:
            config = with_deadline(config, deadline_ms)
        return LoadedFunction(engine, cache, wasm, config, lines.append)

    return go


@pytest.fixture
def held(engine: SandboxEngine) -> Iterator[threading.Event]:
    """Holds the tier-up worker until set: what is queued behind it stays on Winch code."""
    gate = threading.Event()
    engine.tiering.worker.put(gate.wait)
    yield gate
    gate.set()


def call(fn: LoadedFunction, path: str = "/") -> abi.GuestResponse:
    req = abi.GuestRequest("GET", f"http://x{path}", [], b"", "127.0.0.1", "r", "n", "id")
    return fn.invoke(req, host.Invocation(fn.name, "id", {}, lambda _: None))


def serve_until_tiered(fn: LoadedFunction, threads: int = 2) -> list[int]:
    """Requests from `threads` threads until `fn` runs Cranelift code (bounded in time and
    count), then a few more; the statuses of all, any failure raised."""
    statuses: list[int] = []
    errors: list[BaseException] = []
    stop = time.monotonic() + TIER_UP_BOUND_S

    def loop() -> None:
        try:
            after = 0
            for _ in range(MAX_REQUESTS):
                statuses.append(call(fn).status)
                if fn.tier == "cranelift":
                    after += 1
                    if after > 20:
                        return
                elif time.monotonic() > stop:
                    return
                time.sleep(0.002)  # leave the machine to the compile
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if errors:
        raise errors[0]
    return statuses


def test_python_serves_winch_code_then_tiers_up_without_a_failed_request(
    engine: SandboxEngine, load: Loader, held: threading.Event, tmp_path: Path
) -> None:
    project = EXAMPLES / "python" / "hello"
    # What is tested is that the switch fails no request; on a machine shared with other jobs a
    # Winch request beside the compile thread can take longer than the default 100 ms.
    fn = load(project, deadline_ms=5_000)
    assert fn.tier == "winch"
    first = call(fn)
    assert first.status == 200 and first.body == b"Hello from Python!\n"
    held.set()
    statuses = serve_until_tiered(fn)
    assert fn.tier == "cranelift", f"no tier-up within {TIER_UP_BOUND_S} s"
    assert set(statuses) == {200} and len(statuses) > 40
    assert engine.tiering.stats.ups == 1 and engine.tiering.stats.failures == 0
    assert fn.prepares_instances  # instances made ahead, across the switch too
    # A restarted node with the warm cache maps the Cranelift code at once.
    again = load(project)
    assert again.tier == "cranelift"
    assert call(again).body == b"Hello from Python!\n"
    assert engine.tiering.stats.ups == 1


def thread_faults() -> int:
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


def first_call_faults(fn: LoadedFunction, on_a_new_thread: bool = False) -> int:
    """The page faults of one call, on this thread or a new one (a Python function's requests
    run on the calling thread)."""
    counted: list[int] = []

    def go() -> None:
        before = thread_faults()
        if call(fn).status == 200:
            counted.append(thread_faults() - before)

    if on_a_new_thread:
        thread = threading.Thread(target=go)
        thread.start()
        thread.join()
    else:
        go()
    assert counted, "the call failed"
    return counted[0]


# A Python hello's first request in a fresh slot: ~3,600 faults (the slot's first reset, when its
# store closes); ~100 in one its load warmed (LoadedFunction._warm_slot); later ones ~15.
WARM_SLOT_FAULTS = 1_000
CORES = len(os.sched_getaffinity(0))


@pytest.mark.parametrize("threads", [CORES, 0], ids=["warmed", "off"])
def test_first_requests_find_a_warm_slot_on_any_thread_and_tier(
    built: Callable[[Path], Path], tmp_path: Path, threads: int
) -> None:
    """Slots warmed from one new thread per core: a first request on this thread or a new one,
    on Winch code and on Cranelift code, finds a warm slot. Off: it pays the slot's first
    reset, which is what the warm-up saves."""
    project = EXAMPLES / "python" / "hello"
    wasm = built(project).read_bytes()
    config = with_deadline(load_function_config(project), 5_000)
    settings = EngineSettings(pool_total_instances=16, warm_up_threads=threads)
    with SandboxEngine(settings) as engine:
        cache = CompileCache(engine, tmp_path / "compiled")
        gate = threading.Event()
        engine.tiering.worker.put(gate.wait)  # on Winch code until set
        try:
            fn = LoadedFunction(engine, cache, wasm, config, lambda _: None)
            assert fn.tier == "winch"
            faults = [first_call_faults(fn), first_call_faults(fn, on_a_new_thread=True)]
            if not threads:
                assert faults[0] > WARM_SLOT_FAULTS, faults
                return
            assert max(faults) < WARM_SLOT_FAULTS, faults
        finally:
            gate.set()
        wait_for(lambda: fn.tier == "cranelift", "the tier-up")
        again = LoadedFunction(engine, cache, wasm, config, lambda _: None)
        assert again.tier == "cranelift"  # mapped from the cache, in the resident pool
        faults = [first_call_faults(again), first_call_faults(again, on_a_new_thread=True)]
        assert max(faults) < WARM_SLOT_FAULTS, faults


def test_limits_hold_on_winch_code_before_the_tier_up(
    engine: SandboxEngine, load: Loader, held: threading.Event, tmp_path: Path
) -> None:
    bomb = load(FIXTURES / "functions" / "membomb-py")
    counter = load(FIXTURES / "functions" / "counter-py", deadline_ms=1_000)  # room, as above
    assert (bomb.tier, counter.tier) == ("winch", "winch")
    for _ in range(2):
        with pytest.raises(DeadlineExceeded):
            call(counter, "/loop")
        with pytest.raises(MemoryLimitExceeded, match="memory limit of 64 MiB while running"):
            call(bomb)
        assert call(counter).body == b"1 0"  # a fresh instance per request
    # Unloaded before its turn: its compile is skipped, not done for nothing.
    bomb_artifact = CompileCache(engine, tmp_path / "compiled").path_for(bomb.digest)
    del bomb
    gc.collect()
    held.set()
    serve_until_tiered(counter, threads=1)
    assert counter.tier == "cranelift"
    assert engine.tiering.stats.ups == 1
    assert bomb_artifact is not None and not bomb_artifact.exists()
    with pytest.raises(DeadlineExceeded):
        call(counter, "/loop")
    assert call(counter).body == b"1 0"


def test_c_fixtures_keep_their_limits_on_both_tiers(
    tmp_path: Path, built: Callable[[Path], Path], lines: list[host.LogLine]
) -> None:
    """The loop and membomb fixtures (C), tiered although small, before and after the switch."""
    settings = EngineSettings(pool_total_instances=16, tier_up_above_bytes=1)
    with SandboxEngine(settings) as engine:
        gate = threading.Event()
        engine.tiering.worker.put(gate.wait)
        cache = CompileCache(engine, tmp_path)

        def load(name: str) -> LoadedFunction:
            project = FIXTURES / "functions" / name
            wasm = built(project).read_bytes()
            return LoadedFunction(engine, cache, wasm, load_function_config(project), lines.append)

        loop, bomb = load("loop"), load("membomb")
        report = abi.GuestRequest("GET", "http://x/report", [], b"", "127.0.0.1", "r", "n", "id")
        for tier in ("winch", "cranelift"):
            assert (loop.tier, bomb.tier) == (tier, tier)
            with pytest.raises(DeadlineExceeded):
                call(loop)
            with pytest.raises(MemoryLimitExceeded, match="memory limit of 32 MiB while running"):
                bomb.invoke(report, host.Invocation(bomb.name, "id", {}, lambda _: None))
            gate.set()
            deadline = time.monotonic() + TIER_UP_BOUND_S
            while engine.tiering.stats.ups < 2 and time.monotonic() < deadline:
                time.sleep(0.01)


def test_a_reused_instance_does_not_outlive_its_tier(
    tmp_path: Path, built: Callable[[Path], Path], lines: list[host.LogLine]
) -> None:
    """The counter fixture counts in its instance: with the reuse policy the count goes on
    until the tier-up, then starts again in an instance of the new code."""
    settings = EngineSettings(pool_total_instances=16, tier_up_above_bytes=1)
    with SandboxEngine(settings) as engine:
        gate = threading.Event()
        engine.tiering.worker.put(gate.wait)  # the tier-up waits until the gate opens
        project = FIXTURES / "functions" / "counter"
        config = replace(load_function_config(project), instance=InstancePolicy("reuse", 100))
        fn = LoadedFunction(
            engine, CompileCache(engine, tmp_path), built(project).read_bytes(), config,
            lines.append,
        )  # fmt: skip
        assert fn.tier == "winch"
        assert [call(fn).body for _ in range(3)] == [b"1", b"2", b"3"]
        gate.set()
        deadline = time.monotonic() + TIER_UP_BOUND_S
        while fn.tier != "cranelift" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fn.tier == "cranelift"
        assert [call(fn).body for _ in range(2)] == [b"1", b"2"]


def test_failed_tier_up_leaves_winch_code_serving(
    engine: SandboxEngine,
    load: Loader,
    held: threading.Event,
    lines: list[host.LogLine],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fn = load(EXAMPLES / "python" / "hello", deadline_ms=5_000)  # room beside the compile

    # A Cranelift compile that fails (injected: nothing real fails there and not in Winch; a
    # full disk does not, see test_node's full compile cache disk).
    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise ComponentRejected("not a valid WebAssembly component: injected")

    monkeypatch.setattr(CompileCache, "compile", refuse)
    held.set()
    deadline = time.monotonic() + TIER_UP_BOUND_S
    while engine.tiering.stats.failures == 0 and time.monotonic() < deadline:
        assert call(fn).status == 200
        time.sleep(0.05)
    assert engine.tiering.stats.failures == 1 and fn.tier == "winch"
    assert call(fn).body == b"Hello from Python!\n"
    warned = [line.message for line in lines if line.source == "platform"]
    assert any("cranelift compile failed, serving winch code on" in m for m in warned), warned


def test_small_components_go_straight_to_cranelift(engine: SandboxEngine, load: Loader) -> None:
    fn = load(EXAMPLES / "c" / "hello")
    assert fn.tier == "cranelift"
    assert call(fn).status == 200


def test_no_tier_up_when_off_or_already_on_winch() -> None:
    assert EngineSettings().tiers_up
    assert not EngineSettings(tier_up=False).tiers_up
    assert not EngineSettings(compiler="winch").tiers_up  # edge dev: Winch code only


def test_tier_settings_do_not_change_the_cache_key() -> None:
    """Tiering decides which code runs first, not what Cranelift generates."""
    assert EngineSettings().fingerprint() == EngineSettings(tier_up=False).fingerprint()


@pytest.mark.parametrize("disk", ["kept", "none", "unusable"])
def test_background_compiles_suit_the_serving_engine(
    engine: SandboxEngine, tmp_path: Path, built: Callable[[Path], Path], disk: str
) -> None:
    """The tier-up worker compiles in an engine of its own (one thread, no pool); what it makes
    is mapped into, and instantiated in, the engine that serves, or goes to it as bytes when
    there is no cache directory or the directory cannot take it."""
    project = EXAMPLES / "c" / "hello"
    wasm = built(project).read_bytes()
    cache = CompileCache(engine, None if disk == "none" else tmp_path / "compiled")
    if disk == "unusable":  # taken away after the node started
        (tmp_path / "compiled").rmdir()
        (tmp_path / "compiled").write_text("a file where the cache directory goes\n")
    serving = engine.engine_for(len(wasm))
    compiled = cache.load(wasm, engine=serving, compile_in=engine.background_compiler(serving))
    assert cache.stats.misses == 1 and cache.stats.unstored == (disk == "unusable")
    fn = LoadedFunction(engine, cache, wasm, load_function_config(project), lambda _: None)
    assert call(fn).body.startswith(b"Hello from C!")
    assert compiled.get_export_index("edge:function/handler@0.1.0") is not None


def vm_size_bytes() -> int:
    """This process's address space: a pool's reservation shows here, resident or not."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


def wait_for(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIER_UP_BOUND_S
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert done(), f"not within {TIER_UP_BOUND_S} s: {what}"


def wait_sweeps(engine: SandboxEngine, count: int) -> None:
    """Until the ticker has looked for unused baseline engines `count` more times."""
    target = engine.sweeps + count
    wait_for(lambda: engine.sweeps >= target, f"{count} sweeps")


def test_the_baseline_engine_closes_once_no_winch_code_runs_and_is_made_again(
    engine: SandboxEngine, load: Loader, held: threading.Event
) -> None:
    # Deadlines with room: a Winch request beside the compile thread can take longer than the
    # default 100 ms on a machine shared with other jobs, and what is tested is the engine's life.
    fn = load(EXAMPLES / "python" / "hello", deadline_ms=5_000)
    assert fn.tier == "winch" and engine.baseline_open
    # A request on Winch code still under way at the switch (its instance made, not called).
    in_flight = fn._instantiate(engine.deadline_ticks(1000), own=True)
    held.set()
    serve_until_tiered(fn, threads=1)
    wait_sweeps(engine, 2)
    assert engine.baseline_open  # its store keeps the engine open
    reserved = vm_size_bytes()
    invocation = host.Invocation(fn.name, "id", {}, lambda _: None)
    # Its deadline has passed meanwhile (the ticker bumps the engine's epoch): a fresh one.
    capi.set_epoch_deadline(in_flight.store.context, engine.deadline_ticks(1000))
    request = abi.GuestRequest("GET", "http://x/", [], b"", "127.0.0.1", "r", "n", "id")
    assert fn._call_once(in_flight, request, invocation).body == b"Hello from Python!\n"
    del in_flight
    wait_for(lambda: not engine.baseline_open, "the baseline engine closed")
    assert engine.baseline_engines_closed == 1
    # Its pool's reservation (slots of `pool_max_memory_bytes` and guards) is unmapped.
    s = engine.settings
    assert reserved - vm_size_bytes() >= s.pool_total_instances * s.pool_max_memory_bytes
    assert call(fn).body == b"Hello from Python!\n"  # the Cranelift code's engine is untouched
    # The next large component not in the cache gets a new one, with limits and a tier-up.
    counter = load(FIXTURES / "functions" / "counter-py", deadline_ms=1_000)  # room, as above
    assert counter.tier == "winch" and engine.baseline_open
    assert engine.baseline_engines_made == 2
    with pytest.raises(DeadlineExceeded):
        call(counter, "/loop")
    assert call(counter).body == b"1 0"
    serve_until_tiered(counter, threads=1)
    wait_for(lambda: not engine.baseline_open, "the second baseline engine closed")
    assert engine.tiering.stats.ups == 2 and call(counter).body == b"1 0"


def test_unloading_a_function_on_winch_code_closes_its_baseline_engine(
    engine: SandboxEngine, load: Loader, held: threading.Event
) -> None:
    """Held: no tier-up comes; the function's instances made ahead and reused go with it."""
    fn = load(EXAMPLES / "python" / "hello")
    for _ in range(12):  # enough to have instances made ahead
        assert call(fn).status == 200
    assert fn.prepares_instances and engine.baseline_open
    wait_sweeps(engine, 2)
    assert engine.baseline_open
    del fn
    gc.collect()
    wait_for(lambda: not engine.baseline_open, "the baseline engine closed")
    assert engine.baseline_engines_closed == 1


def test_a_baseline_engine_reads_open_until_its_pool_is_unmapped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given up by the sweeper, the engine is closed outside its lock (the ticker lets go of it
    # first, then the pool is unmapped): `baseline_open` must not say closed before that ends.
    class Token:  # a Code stand-in: only held weakly by the engine
        pass

    seen: list[tuple[bool, int]] = []
    with SandboxEngine(EngineSettings(pool_total_instances=4)) as e:
        token = e.baseline_code(lambda _: Token())  # type: ignore[arg-type,return-value]
        assert e.baseline_open
        remove = e.ticker.remove

        def removing(engine: object) -> None:
            seen.append((e.baseline_open, e.baseline_engines_closed))
            remove(engine)  # type: ignore[arg-type]

        monkeypatch.setattr(e.ticker, "remove", removing)
        del token
        gc.collect()
        assert not e._release_unused()
        assert seen == [(True, 0)]  # while the close was under way
        assert not e.baseline_open and e.baseline_engines_closed == 1
