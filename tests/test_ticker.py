"""The epoch ticker behind deadlines: the native one (our C helper, built with zig) and the Python
fallback, in process and in a node."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import wasmtime

from edge.build.toolchain import Toolchain
from edge.config.function import load_function_config
from edge.errors import DeadlineExceeded, ToolchainMissing
from edge.sandbox import abi, host, native_build
from edge.sandbox.compile_cache import CompileCache
from edge.sandbox.engine import EngineSettings, SandboxEngine
from edge.sandbox.function import LoadedFunction
from edge.sandbox.ticker import (
    NATIVE,
    PYTHON,
    NativeTicker,
    PythonTicker,
    Ticker,
    native_lib,
    start_ticker,
)

from .conftest import COMPILED, EXAMPLES, FIXTURES, Proc

pytestmark = pytest.mark.toolchain

# Bounds for things that take milliseconds: only a broken ticker gets near them.
WAIT_S = 30.0


def wait_for(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert done(), f"not within {WAIT_S} s: {what}"


@pytest.fixture(params=[NATIVE, PYTHON])
def engine(request: pytest.FixtureRequest) -> Iterator[SandboxEngine]:
    with SandboxEngine(EngineSettings(pool_total_instances=16, ticker=request.param)) as e:
        assert e.ticker.kind == request.param and e.ticker_fallback == ""
        yield e


Loader = Callable[[Path], LoadedFunction]


@pytest.fixture
def load(engine: SandboxEngine, built: Callable[[Path], Path]) -> Loader:
    cache = CompileCache(engine, COMPILED)

    def go(project: Path) -> LoadedFunction:
        wasm = built(project).read_bytes()
        return LoadedFunction(engine, cache, wasm, load_function_config(project), print)

    return go


def call(fn: LoadedFunction) -> abi.GuestResponse:
    req = abi.GuestRequest("GET", "http://x/", [], b"", "127.0.0.1", "r", "n", "id")
    return fn.invoke(req, host.Invocation(fn.name, "id", {}, lambda _: None))


def test_the_native_ticker_is_the_one_in_use_when_zig_is_present() -> None:
    assert not isinstance(native_lib(), str)
    with SandboxEngine(EngineSettings(pool_total_instances=4)) as engine:
        assert isinstance(engine.ticker, NativeTicker)
        assert engine.ticker_fallback == "" and engine.ticker_summary == "native"


def test_an_infinite_loop_is_stopped_at_its_deadline(engine: SandboxEngine, load: Loader) -> None:
    loop = load(FIXTURES / "functions" / "loop")
    hello = load(EXAMPLES / "c" / "hello")
    for _ in range(3):
        with pytest.raises(DeadlineExceeded, match="deadline of 100 ms"):
            call(loop)
        assert call(hello).body == b"Hello from C!\n"
    assert engine.ticker.stats().running == 0


def test_a_sleeping_ticker_wakes_for_a_call_and_its_deadline_holds(
    engine: SandboxEngine, load: Loader
) -> None:
    loop = load(FIXTURES / "functions" / "loop")
    ticker = engine.ticker
    wait_for(lambda: ticker.stats().asleep, "the ticker asleep with no call")
    slept = ticker.stats()
    assert slept.sleeps >= 1 and slept.running == 0
    with pytest.raises(DeadlineExceeded):  # only ticks can end it: the ticker woke up
        call(loop)
    woke = ticker.stats()
    assert woke.ticks > slept.ticks
    wait_for(lambda: ticker.stats().sleeps > woke.sleeps, "asleep again")
    with pytest.raises(DeadlineExceeded):
        call(loop)


def _epoch_engine() -> wasmtime.Engine:
    config = wasmtime.Config()
    config.epoch_interruption = True
    return wasmtime.Engine(config)


@pytest.mark.parametrize("kind", [NATIVE, PYTHON])
def test_an_engine_removed_from_a_running_ticker_may_be_closed_at_once(kind: str) -> None:
    """Each engine is ticked at least once, then removed and closed right away while the
    ticker runs at 1 ms (kept awake by a call that never leaves): a tick still using it
    would touch a freed engine."""
    ticker, why = start_ticker(kind, 1)
    assert why == "" and ticker.kind == kind
    token = object()
    ticker.enter(token)
    try:
        kept = _epoch_engine()
        ticker.add(kept)
        for _ in range(100):
            engine = _epoch_engine()
            ticker.add(engine)
            seen = ticker.stats().ticks
            wait_for(lambda s=seen: ticker.stats().ticks >= s + 2, "a tick over the engine")
            ticker.remove(engine)
            engine.close()
        seen = ticker.stats().ticks
        wait_for(lambda: ticker.stats().ticks > seen, "ticks after the removals")
        assert ticker.stats().running == 1 and not ticker.stats().asleep
    finally:
        ticker.leave(token)
        ticker.close()


def test_a_closed_native_ticker_refuses_engines_and_tolerates_late_calls() -> None:
    ticker, _ = start_ticker(NATIVE, 2)
    engine = _epoch_engine()
    ticker.add(engine)
    ticker.close()
    ticker.close()  # twice is harmless
    ticks = ticker.stats().ticks
    token = object()
    ticker.enter(token)  # a request finishing on a worker while the node stops
    ticker.leave(token)
    ticker.remove(engine)
    with pytest.raises(OSError, match="did not take an engine"):
        ticker.add(_epoch_engine())
    time.sleep(0.02)  # ten ticks' time: none comes
    after = ticker.stats()
    assert after.ticks == ticks and not after.asleep and after.running == 0


def test_without_the_native_helper_the_python_ticker_serves_and_says_why() -> None:
    ticker: Ticker
    ticker, why = start_ticker(NATIVE, 2, load=lambda: "ToolchainMissing: zig not found")
    try:
        assert isinstance(ticker, PythonTicker)
        assert why == "native ticker unavailable (ToolchainMissing: zig not found)"
    finally:
        ticker.close()


def test_the_helper_is_built_once_into_its_cache_and_found_there_without_zig(
    tmp_path: Path,
) -> None:
    no_zig = Toolchain(has_module=lambda _name: False)
    with pytest.raises(ToolchainMissing, match="zig not found: pip install ziglang"):
        native_build.build_library("ticker", tmp_path / "empty", no_zig)
    built = native_build.build_library("ticker", tmp_path / "cache")
    assert built.parent == tmp_path / "cache" and built.name.startswith("ticker-")
    assert [p.name for p in built.parent.iterdir()] == [built.name]  # no scratch left
    assert native_build.build_library("ticker", tmp_path / "cache", no_zig) == built



def test_building_the_helper_deletes_its_libraries_of_other_versions(tmp_path: Path) -> None:
    """Each version's library stayed in ~/.cache/edge/native for good."""
    cache = tmp_path / "cache"
    cache.mkdir()
    old = cache / "ticker-0123456789abcdef.so"
    old.write_bytes(b"an earlier version's library")
    undeletable = cache / "ticker-fedcba9876543210.so"
    undeletable.mkdir()  # unlink fails (EISDIR), as it would for a file we may not delete
    others = ["clock-0123456789abcdef.so", "ticker-notes.txt", "ticker.so", "ticker-1.so"]
    for name in others:
        (cache / name).write_bytes(b"not a ticker library of ours")
    built = native_build.build_library("ticker", cache)
    assert not old.exists() and undeletable.is_dir()
    assert sorted(p.name for p in cache.iterdir()) == sorted([built.name, undeletable.name,
                                                              *others])
    # Found in the cache, not built: nothing is looked at.
    old.write_bytes(b"an earlier version's library")
    assert native_build.build_library("ticker", cache) == built and old.exists()


_LOAD = """
import ctypes, sys
from pathlib import Path
from edge.sandbox import native_build
lib = ctypes.CDLL(str(native_build.build_library("ticker", Path(sys.argv[1]))))
print(lib.edge_ticker_size())
"""


@pytest.mark.parametrize("keep_bytes", [4096, 1000])
def test_a_truncated_library_in_the_cache_is_built_again_never_loaded(
    tmp_path: Path, keep_bytes: int
) -> None:
    """A library cut short (a disk that filled, a crash before its pages were written) maps
    pages past its end: loaded, it killed the process with SIGBUS. In a child process, so a
    crash fails this test instead of ending the run."""
    cache = tmp_path / "cache"
    built = native_build.build_library("ticker", cache)
    whole = built.read_bytes()
    built.write_bytes(whole[:keep_bytes])
    no_zig = Toolchain(has_module=lambda _name: False)
    with pytest.raises(ToolchainMissing, match=f"{built.name} in the cache is damaged"):
        native_build.build_library("ticker", cache, no_zig)
    child = subprocess.run(
        [sys.executable, "-c", _LOAD, str(cache)], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, (child.returncode, child.stderr)
    assert int(child.stdout) > 0 and built.read_bytes() == whole


# --- in a node ------------------------------------------------------------------------------------


def _node(start_node: Callable[..., Proc], built: Callable[[Path], Path], **kw: object) -> Proc:
    project = FIXTURES / "functions" / "loop"
    built(project)
    sandbox = str(kw.pop("sandbox", ""))
    body = f'[[function]]\nproject = "{project}"\n\n[[route]]\nroute = "*/"\nfunction = "loop"\n'
    return start_node(sandbox + body, **kw)


def test_a_node_without_the_native_helper_falls_back_says_so_and_keeps_deadlines(
    start_node: Callable[..., Proc], built: Callable[[Path], Path], tmp_path: Path
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # the helper's cache dir cannot be made under a file
    node = _node(start_node, built, env={"EDGE_NATIVE_DIR": str(blocked / "native")})
    ready = httpx.get(node.url + "/readyz").json()
    assert ready["epoch_ticker"].startswith("python (native ticker unavailable (")
    assert "Not a directory" in ready["epoch_ticker"]
    assert node.log().count("edge node: epoch ticker: python, native ticker unavailable") == 1
    metrics = httpx.get(node.url + "/metrics").text
    assert 'edge_node_epoch_ticker{ticker="python"} 1.0' in metrics
    # So does the native request path (same helper cache), and the C function is served.
    assert ready["invoke"].startswith("python (native invoke unavailable (")
    assert node.log().count("edge node: invoke: python, native invoke unavailable") == 1
    assert 'edge_node_invoke{invoke="python"} 1.0' in metrics
    assert ready["workers"] == "off"  # no native request path, so no native workers
    assert ready["wire"] == "off"  # nor its loop side
    assert "workers" not in node.log()
    r = httpx.get(node.url + "/", timeout=30)
    assert r.status_code == 504 and r.json()["error"] == "deadline_exceeded"


@pytest.mark.parametrize("kind", [NATIVE, PYTHON])
def test_a_node_answers_504_for_an_infinite_loop_with_either_ticker(
    start_node: Callable[..., Proc], built: Callable[[Path], Path], kind: str
) -> None:
    node = _node(start_node, built, sandbox=f'[sandbox]\nticker = "{kind}"\n\n')
    assert httpx.get(node.url + "/readyz").json()["epoch_ticker"] == kind
    assert f'edge_node_epoch_ticker{{ticker="{kind}"}} 1.0' in httpx.get(node.url + "/metrics").text
    assert "epoch ticker" not in node.log()
    assert httpx.get(node.url + "/readyz").json()["invoke"] == NATIVE
    assert httpx.get(node.url + "/readyz").json()["workers"] == NATIVE  # started with the node
    assert httpx.get(node.url + "/readyz").json()["wire"] == NATIVE  # wire.c packs and reads
    assert 'edge_node_invoke{invoke="native"} 1.0' in httpx.get(node.url + "/metrics").text
    for _ in range(3):
        r = httpx.get(node.url + "/", timeout=30)
        assert r.status_code == 504 and r.json()["error"] == "deadline_exceeded"
