"""Large components run in the pool whose slots stay resident: still a fresh instance per
request (module state and heap writes never carry over), deadlines still apply."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.config.function import load_function_config
from edge.errors import DeadlineExceeded
from edge.sandbox import abi, host, prepare
from edge.sandbox.compile_cache import CompileCache
from edge.sandbox.engine import EngineSettings, SandboxEngine
from edge.sandbox.function import WARM_UP_MS, LoadedFunction

from .conftest import COMPILED, EXAMPLES, FIXTURES

pytestmark = pytest.mark.toolchain


@pytest.fixture(scope="module")
def engine() -> Iterator[SandboxEngine]:
    with SandboxEngine(EngineSettings(pool_total_instances=64)) as e:
        yield e


def load(engine: SandboxEngine, built: Callable[[Path], Path], project: Path) -> LoadedFunction:
    wasm = built(project).read_bytes()
    config = load_function_config(project)
    return LoadedFunction(engine, CompileCache(engine, COMPILED), wasm, config, lambda _: None)


def call(fn: LoadedFunction, path: str = "/") -> abi.GuestResponse:
    req = abi.GuestRequest("GET", f"http://x{path}", [], b"", "127.0.0.1", "r", "n", "id")
    return fn.invoke(req, host.Invocation(fn.name, "id", {}, lambda _: None))


def test_python_function_in_resident_pool_never_sees_an_earlier_request(
    engine: SandboxEngine, built: Callable[[Path], Path]
) -> None:
    project = FIXTURES / "functions" / "counter-py"
    fn = load(engine, built, project)
    assert engine.engine_for(len(built(project).read_bytes())) is not engine.engine
    # Enough requests that slots are freed, reset and handed out again, prepared or not.
    bodies = [call(fn).body for _ in range(4 * prepare.SAMPLES)]
    assert fn.prepares_instances
    assert bodies == [b"1 0"] * len(bodies)


def test_deadline_applies_in_resident_pool(
    engine: SandboxEngine, built: Callable[[Path], Path]
) -> None:
    fn = load(engine, built, FIXTURES / "functions" / "counter-py")
    for _ in range(2):
        with pytest.raises(DeadlineExceeded):
            call(fn, "/loop")
        assert call(fn).body == b"1 0"


def test_small_component_gets_its_data_copied_in(
    engine: SandboxEngine, built: Callable[[Path], Path], tmp_path: Path
) -> None:
    """A small component (C) runs in the pool whose memories are initialized by copying the
    data segments in, not by mapping the image: still its data every time (the hello's text)
    and nothing an earlier request wrote (the counter), across slot resets."""
    hello, counter = EXAMPLES / "c" / "hello", FIXTURES / "functions" / "counter"
    small = engine.engine_for(len(built(hello).read_bytes()))
    assert small is not engine.engine
    assert engine.engine_for(len(built(counter).read_bytes())) is small
    assert engine.engine_for(engine.settings.copy_init_below_bytes) is engine.engine
    first, second = load(engine, built, hello), load(engine, built, counter)
    # More requests than the pool has slots, so freed slots are reset and handed out again.
    answers = [(call(first).body, call(second).body) for _ in range(100)]
    assert answers == [(b"Hello from C!\n", b"1")] * 100


def test_copied_and_mapped_artifacts_are_kept_apart(
    engine: SandboxEngine, built: Callable[[Path], Path], tmp_path: Path
) -> None:
    """wasmtime refuses an artifact made with the memory image in an engine without it, so the
    two get their own files; each is found again by a later load (a restart)."""
    wasm = built(EXAMPLES / "c" / "hello").read_bytes()
    small = engine.engine_for(len(wasm))
    cache = CompileCache(engine, tmp_path)
    digest = "ab" * 32
    assert cache.path_for(digest, small) != cache.path_for(digest, engine.engine)
    assert cache.path_for(digest, engine.engine) == cache.path_for(digest)
    cache.load(wasm, engine=small)
    cache.load(wasm, engine=engine.engine)
    again = CompileCache(engine, tmp_path)
    again.load(wasm, engine=small)
    again.load(wasm, engine=engine.engine)
    assert (again.stats.hits, again.stats.misses) == (2, 0)
    assert len(list(tmp_path.glob("*.cwasm"))) == 2


def test_start_code_that_never_returns_holds_a_load_up_by_the_warm_up_bound_only(
    built: Callable[[Path], Path], tmp_path: Path
) -> None:
    """Loading a function whose slots stay resident instantiates it once per warm-up thread;
    start code that never returns (the fixture's constructor) is cut off there at WARM_UP_MS,
    not at the function's 3 s deadline, so the load ends well within one deadline. Requests
    still get the whole deadline (and their 504's error)."""
    project = FIXTURES / "functions" / "startloop"
    config = load_function_config(project)
    wasm = built(project).read_bytes()
    settings = EngineSettings(pool_total_instances=8, resident_above_bytes=0, warm_up_threads=2)
    with SandboxEngine(settings) as engine:
        assert engine.keeps_slots_resident(engine.engine_for(len(wasm)))
        assert config.limits.deadline_ms >= 20 * WARM_UP_MS
        started = time.monotonic()
        fn = LoadedFunction(engine, CompileCache(engine, tmp_path), wasm, config, lambda _: None)
        assert time.monotonic() - started < config.limits.deadline_ms / 1000
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="instantiat"):
            call(fn)
        assert time.monotonic() - started >= config.limits.deadline_ms / 1000 * 0.9
