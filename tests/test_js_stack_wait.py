"""A JS function's log lines while its source map is being decoded, in process with the real
stack-js component. A run under a short budget (inline on the node's event loop) never waits for
the decode: it ends as over its budget, to be run again on a worker thread, which waits and
maps. The decode is held back (stackmap's thread replaced) until the test lets it go, so the
order of things is certain, not timed."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.config.function import InstancePolicy, Limits, load_function_config
from edge.errors import FunctionException
from edge.sandbox import abi, host, stackmap
from edge.sandbox.compile_cache import CompileCache
from edge.sandbox.engine import EngineSettings, SandboxEngine
from edge.sandbox.function import LoadedFunction, OverBudget

from .conftest import COMPILED, FIXTURES

pytestmark = pytest.mark.toolchain

PROJECT = FIXTURES / "functions" / "stack-js"
DEADLINE_MS = 2000
# Far shorter than the deadline, far longer than a run of a reused instance (~0.15 ms): the run
# ends over its budget only because of the map.
BUDGET_TICKS = 100
MAPPED_THROW = "    at parseAmount@lib/parse.js:5:11"


class HeldDecode:
    """Stands in for stackmap's thread: decodes on a thread once `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.done = threading.Event()
        self.spawned = 0

    def spawn(self, decode: Callable[[], None]) -> None:
        self.spawned += 1

        def run() -> None:
            self.release.wait()
            decode()
            self.done.set()

        threading.Thread(target=run, daemon=True).start()


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldDecode]:
    decode = HeldDecode()
    monkeypatch.setattr(stackmap, "_thread", decode.spawn)
    yield decode
    decode.release.set()


@pytest.fixture(scope="module")
def function(built: Callable[[Path], Path]) -> Iterator[Callable[[], LoadedFunction]]:
    """A fresh load of stack-js each call (a map decodes once per loaded function), reusing
    its instance so that the runs with a budget are the call only."""
    wasm = built(PROJECT).read_bytes()
    base = load_function_config(PROJECT)
    config = dataclasses.replace(
        base, limits=Limits(deadline_ms=DEADLINE_MS), instance=InstancePolicy("reuse")
    )
    with SandboxEngine(EngineSettings(pool_total_instances=16)) as engine:
        cache = CompileCache(engine, COMPILED)

        def load() -> LoadedFunction:
            loaded = LoadedFunction(engine, cache, wasm, config, lambda _line: None)
            run(loaded, "?amount=1", [])  # instantiated, its instance kept
            return loaded

        yield load


def run(
    fn: LoadedFunction, query: str, lines: list[host.LogLine], budget_ticks: int | None = None
) -> abi.GuestResponse:
    request = abi.GuestRequest(
        method="GET", url=f"http://example.com/{query}", headers=[], body=b"",
        client_ip="127.0.0.1", region="r", node_id="n", request_id="req",
        geo=abi.Geo(None, None, None, None, None),
    )  # fmt: skip
    invocation = host.Invocation(fn.name, "req", {}, lines.append)
    return fn.invoke(request, invocation, budget_ticks)


def test_a_run_under_a_budget_leaves_the_wait_to_a_worker_run(
    function: Callable[[], LoadedFunction], held: HeldDecode
) -> None:
    fn = function()
    dropped: list[host.LogLine] = []
    with pytest.raises(OverBudget):  # while the decode is held: it did not wait for it
        run(fn, "?amount=x", dropped, BUDGET_TICKS)
    assert held.spawned == 1 and not held.done.is_set()
    assert "@bundle.js:" in dropped[0].message and host.NOT_MAPPED_NOTE not in dropped[0].message
    # The node runs it again on a worker thread: that run waits for the decode and maps.
    threading.Timer(0.05, held.release.set).start()
    lines: list[host.LogLine] = []
    with pytest.raises(FunctionException):
        run(fn, "?amount=x", lines)
    assert held.done.is_set()
    assert lines[0].message.splitlines()[1] == MAPPED_THROW
    # Decoded once: later lines, of every level, are mapped at once.
    levels: list[host.LogLine] = []
    run(fn, "levels", levels)
    assert [line.level for line in levels] == ["warn", "info", "debug", "error"]
    assert all("@index.js:13:17" in line.message for line in levels)
    assert held.spawned == 1


def test_a_budget_as_long_as_the_deadline_logs_the_line_unmapped_at_once(
    function: Callable[[], LoadedFunction], held: HeldDecode
) -> None:
    # No run again when the budget is the whole deadline, so no wait on the event loop either.
    lines: list[host.LogLine] = []
    with pytest.raises(FunctionException):
        run(function(), "?amount=x", lines, budget_ticks=1_000_000)
    assert held.spawned == 1 and not held.done.is_set()
    assert "@bundle.js:" in lines[0].message
    assert lines[0].message.endswith(host.NOT_MAPPED_NOTE)


def test_a_wait_past_its_bound_logs_the_line_unmapped_with_a_note(
    function: Callable[[], LoadedFunction], held: HeldDecode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host, "WAIT_FOR_MAP_S", 0.01)
    fn = function()
    lines: list[host.LogLine] = []
    with pytest.raises(FunctionException):
        run(fn, "?amount=x", lines)
    assert lines[0].message.endswith(host.NOT_MAPPED_NOTE)
    held.release.set()
    assert held.done.wait(30)
    lines.clear()
    with pytest.raises(FunctionException):
        run(fn, "?amount=x", lines)
    assert lines[0].message.splitlines()[1] == MAPPED_THROW
    assert host.NOT_MAPPED_NOTE not in lines[0].message
