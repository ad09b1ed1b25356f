"""Large components run in the pool whose slots stay resident: still a fresh instance per
request (module state and heap writes never carry over), deadlines still apply."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.config.function import load_function_config
from edge.errors import DeadlineExceeded
from edge.sandbox import abi, host, prepare
from edge.sandbox.compile_cache import CompileCache
from edge.sandbox.engine import EngineSettings, SandboxEngine
from edge.sandbox.function import LoadedFunction

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


def test_small_component_stays_in_default_pool(
    engine: SandboxEngine, built: Callable[[Path], Path]
) -> None:
    project = EXAMPLES / "c" / "hello"
    assert engine.engine_for(len(built(project).read_bytes())) is engine.engine
    fn = load(engine, built, project)
    assert call(fn).status == 200
