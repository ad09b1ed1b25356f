"""Instances prepared ahead of requests: still one fresh instance per request, same limits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.config.function import load_function_config
from edge.errors import DeadlineExceeded
from edge.sandbox import abi, host, prepare
from edge.sandbox.compile_cache import CompileCache
from edge.sandbox.engine import EngineSettings, SandboxEngine
from edge.sandbox.function import LoadedFunction

from .conftest import COMPILED, EXAMPLES, FIXTURES, ROOMY_DEADLINE_MS, with_deadline

pytestmark = pytest.mark.toolchain

Loader = Callable[[Path], LoadedFunction]


@pytest.fixture(scope="module")
def always() -> Iterator[SandboxEngine]:
    """An engine that prepares instances for every fresh function, however cheap."""
    with SandboxEngine(EngineSettings(pool_total_instances=64, prepare_above_us=0)) as e:
        yield e


def loader(
    engine: SandboxEngine,
    built: Callable[[Path], Path],
    lines: list[host.LogLine],
    deadline_ms: int | None = None,
) -> Loader:
    """`deadline_ms`: instead of the project's, where the test is not about speed."""
    cache = CompileCache(engine, COMPILED)

    def go(project: Path) -> LoadedFunction:
        wasm = built(project).read_bytes()
        config = load_function_config(project)
        if deadline_ms is not None:
            config = with_deadline(config, deadline_ms)
        return LoadedFunction(engine, cache, wasm, config, lines.append)

    return go


def call(fn: LoadedFunction, request_id: str, lines: list[host.LogLine]) -> abi.GuestResponse:
    req = abi.GuestRequest("GET", "http://x/", [], b"", "127.0.0.1", "r", "n", request_id)
    return fn.invoke(req, host.Invocation(fn.name, request_id, fn.config.config, lines.append))


def test_prepared_instances_are_never_shared(
    always: SandboxEngine, built: Callable[[Path], Path], lines: list[host.LogLine]
) -> None:
    fn = loader(always, built, lines)(FIXTURES / "functions" / "counter")
    counts = [call(fn, f"r{i}", lines).body for i in range(3 * prepare.SAMPLES)]
    assert fn.prepares_instances
    assert counts == [b"1"] * len(counts)


def test_prepared_instance_keeps_the_deadline(
    always: SandboxEngine, built: Callable[[Path], Path], lines: list[host.LogLine]
) -> None:
    load = loader(always, built, lines)
    loop = load(FIXTURES / "functions" / "loop")
    hello = load(EXAMPLES / "c" / "hello")
    for i in range(prepare.SAMPLES + 2):
        with pytest.raises(DeadlineExceeded):
            call(loop, f"loop-{i}", lines)
        assert call(hello, f"hello-{i}", lines).status == 200
    assert loop.prepares_instances and hello.prepares_instances


def test_python_function_gets_prepared_and_logs_per_request(
    built: Callable[[Path], Path], lines: list[host.LogLine]
) -> None:
    # Default settings: a componentize-py instantiation is well above the threshold.
    with SandboxEngine(EngineSettings(pool_total_instances=64)) as engine:
        # Roomy: its first request on Winch code, beside the Cranelift compile, once took 100 ms.
        load = loader(engine, built, lines, deadline_ms=ROOMY_DEADLINE_MS)
        fn = load(EXAMPLES / "python" / "config")
        ids = [f"py-{i}" for i in range(prepare.SAMPLES + 4)]
        for request_id in ids:
            assert call(fn, request_id, lines).status == 200
        assert fn.prepares_instances
    logged = [line.request_id for line in lines if line.source == "log"]
    assert logged == ids  # one line per request, each tagged with its own request


def test_cheap_function_is_not_prepared(
    built: Callable[[Path], Path], lines: list[host.LogLine]
) -> None:
    with SandboxEngine(EngineSettings(pool_total_instances=64, prepare_above_us=100_000)) as e:
        fn = loader(e, built, lines)(EXAMPLES / "c" / "hello")
        for i in range(prepare.SAMPLES + 2):
            assert call(fn, f"c-{i}", lines).status == 200
        assert not fn.prepares_instances


def test_store_closes_waiting_on_a_busy_closing_thread_are_bounded() -> None:
    """Each store waiting to be closed holds a pool slot: past the bound, the caller closes its
    own store at once instead of queueing it behind a busy closing thread."""
    preparer = prepare.Preparer()
    busy, closed_by = threading.Event(), []

    class FakeStore:
        def close(self) -> None:
            closed_by.append(threading.current_thread().name)

    class HeldStore:
        def close(self) -> None:
            busy.wait(10)

    preparing = threading.Event()
    preparer._put(lambda: preparing.wait(10))  # the instance preparer is busy throughout
    preparer.retire(HeldStore())  # the closing thread is held up
    try:
        for _ in range(prepare.MAX_PENDING_CLOSES + 5):
            preparer.retire(FakeStore())
        assert closed_by == [threading.current_thread().name] * 6  # 1 held + 31 queued
    finally:
        busy.set()
    deadline = time.monotonic() + 10
    while len(closed_by) < prepare.MAX_PENDING_CLOSES + 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    # Closed while the preparer was still busy: closes do not wait for instances being made.
    assert closed_by[6:] == ["store-closer"] * (prepare.MAX_PENDING_CLOSES - 1)
    preparer.retire(FakeStore())  # the queue drained: closes go to the closing thread again
    preparing.set()
    preparer.close()
    assert closed_by[-1] == "store-closer"
