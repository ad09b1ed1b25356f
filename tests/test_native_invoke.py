"""The native request path (edge/sandbox/native/invoke.c) against the Python one: the same
answers for requests of every shape, and a clean fallback when the helper is not there or does
not match wasmtime-py's layout. test_sandbox runs all its tests on both paths as well."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.config.function import load_function_config
from edge.errors import NodeOutOfMemory
from edge.node import http
from edge.sandbox import abi, capi, host, native_build, native_invoke
from edge.sandbox.compile_cache import CompileCache
from edge.sandbox.engine import EngineSettings, SandboxEngine
from edge.sandbox.function import LoadedFunction

from .conftest import COMPILED, EXAMPLES, FIXTURES

pytestmark = pytest.mark.toolchain

Load = Callable[[SandboxEngine, str], LoadedFunction]


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, SandboxEngine]]:
    native = SandboxEngine(EngineSettings(pool_total_instances=16))
    python = SandboxEngine(EngineSettings(pool_total_instances=16, invoke="python"))
    with native, python:
        assert (native.invoke_summary, python.invoke_summary) == ("native", "python")
        yield {"native": native, "python": python}


@pytest.fixture
def load(built: Callable[[Path], Path], lines: list[host.LogLine]) -> Load:
    def go(engine: SandboxEngine, example: str) -> LoadedFunction:
        project = EXAMPLES / "c" / example
        wasm = built(project).read_bytes()
        config = load_function_config(project)
        return LoadedFunction(engine, CompileCache(engine, COMPILED), wasm, config, lines.append)

    return go


def call(fn: LoadedFunction, req: abi.GuestRequest) -> abi.GuestResponse:
    return fn.invoke(req, host.Invocation(fn.name, req.request_id, {}, lambda _: None))


def shaped(headers: list[tuple[str, str]], geo: abi.Geo, body: bytes) -> abi.GuestRequest:
    return abi.GuestRequest(
        "PUT", "http://example.com/ü?q=✓", headers, body, "2001:db8::1", "eu-west", "n-1",
        "req-shape", geo,
    )  # fmt: skip


SHAPES = {
    "no headers, no geo, empty body": shaped([], abi.Geo(), b""),
    "geo in part": shaped([("a", "1")], abi.Geo(country="SE", latitude=59.3), b"x"),
    "geo in full": shaped([("a", "1")], abi.Geo("GB", "EU", "London", 51.5, -0.09), b"x"),
    "300 headers, empty and non-ASCII values": shaped(
        [(f"x-{i}", "✓" * (i % 7)) for i in range(300)] + [("x-empty", "")],
        abi.Geo(city="Zürich"),
        "héllo ✓".encode(),
    ),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_both_paths_see_the_same_request(
    engines: dict[str, SandboxEngine], load: Load, shape: str
) -> None:
    req = SHAPES[shape]
    seen = {}
    for kind, engine in engines.items():
        resp = call(load(engine, "echo"), req)
        assert resp.status == 200 and resp.headers == [("content-type", "application/json")]
        seen[kind] = json.loads(resp.body)
    assert seen["native"] == seen["python"]
    got = seen["native"]
    assert [tuple(h) for h in got["headers"]] == list(req.headers)
    assert got["body"] == req.body.decode()
    assert got["url"] == req.url and got["client_ip"] == req.client_ip
    expected_geo = {
        "country": req.geo.country,
        "continent": req.geo.continent,
        "city": req.geo.city,
        "latitude": req.geo.latitude,
        "longitude": req.geo.longitude,
    }
    assert got["geo"] == pytest.approx(expected_geo)


def test_the_native_path_makes_none_of_the_python_paths_calls(
    engines: dict[str, SandboxEngine], load: Load, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: object) -> int:
        raise AssertionError("the Python path instantiated")

    monkeypatch.setattr(capi, "linker_instantiate", refuse)
    req = SHAPES["geo in full"]
    assert call(load(engines["native"], "hello"), req).body == b"Hello from C!\n"
    with pytest.raises(AssertionError, match="the Python path instantiated"):
        call(load(engines["python"], "hello"), req)  # the patch does bite


def test_spans_and_instantiate_time_come_from_the_helper(
    engines: dict[str, SandboxEngine], load: Load
) -> None:
    fn = load(engines["native"], "hello")
    invocation = host.Invocation(fn.name, "req-marks", {}, lambda _: None, marks=[])
    fn.invoke(SHAPES["geo in part"], invocation)
    assert invocation.marks is not None
    (n1, start1, end1), (n2, start2, end2) = invocation.marks
    assert (n1, n2) == ("instantiate", "execute")
    assert 0 < start1 <= end1 <= start2 <= end2  # wall clock ns, in order
    assert invocation.instantiate_s is not None and 0 < invocation.instantiate_s < 1


def test_a_layout_wasmtime_changed_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    dll = native_build.load_helper("invoke")
    assert not isinstance(dll, str)
    moved = [*native_invoke._expected_layout()]
    moved[0] += 8  # as if wasmtime_component_val_t had grown
    monkeypatch.setattr(native_invoke, "_expected_layout", lambda: moved)
    with pytest.raises(ValueError, match=r"wasmtime value layout .* is not this wasmtime-py.s"):
        native_invoke.Helper(dll)


def test_without_the_helper_the_python_path_serves_and_says_why(
    monkeypatch: pytest.MonkeyPatch, load: Load
) -> None:
    why = "ToolchainMissing: zig not found"
    monkeypatch.setattr(native_build, "load_helper", lambda _: why)
    with SandboxEngine(EngineSettings(pool_total_instances=4)) as engine:
        assert engine.invoke_helper is None
        assert engine.invoke_summary == f"python (native invoke unavailable ({why}))"
        assert engine.notes[-1] == f"invoke: python, native invoke unavailable ({why})"
        assert call(load(engine, "hello"), SHAPES["geo in part"]).body == b"Hello from C!\n"


def test_a_log_line_over_the_helpers_cut_keeps_whole_characters(
    engines: dict[str, SandboxEngine], built: Callable[[Path], Path]
) -> None:
    engine = engines["native"]
    project = FIXTURES / "functions" / "logs"
    fn = LoadedFunction(
        engine, CompileCache(engine, COMPILED), built(project).read_bytes(),
        load_function_config(project), lambda _: None,
    )  # fmt: skip
    pooled, helper = fn.pooled(fn.config.config), engine.invoke_helper
    assert pooled is not None and helper is not None
    outcome = helper.fresh(pooled, SHAPES["geo in part"])
    kind, level, size, _ = host._EVENT.unpack_from(outcome.events, 0)
    message = outcome.events[host._EVENT.size : host._EVENT.size + size]
    # "a" and 5,000 four-byte characters (20,001 bytes) logged; the helper keeps at most 16,388
    # bytes, which falls inside a character here: it keeps the 4,096 whole ones before it (more
    # than the node keeps of a line, so the node's own truncation still marks it).
    assert (kind, host.LOG_LEVELS[level]) == (1, "error")
    assert size == 1 + 4 * 4096
    assert message.decode() == "a" + "😀" * 4096  # strict: a cut character would raise


def test_a_linker_the_helper_cannot_make_leaves_the_function_on_the_python_path(
    engines: dict[str, SandboxEngine], load: Load, monkeypatch: pytest.MonkeyPatch
) -> None:
    helper = engines["native"].invoke_helper
    assert helper is not None
    monkeypatch.setattr(helper, "_linker_new", lambda *_: None)  # as edge_linker_new's NULL
    fn = load(engines["native"], "hello")
    assert fn.pooled({}) is None  # so the node does not queue it for the workers either
    instantiated: list[int] = []
    real = capi.linker_instantiate

    def counted(*args: object) -> object:
        instantiated.append(1)
        return real(*args)

    monkeypatch.setattr(capi, "linker_instantiate", counted)
    assert call(fn, SHAPES["geo in full"]).body == b"Hello from C!\n"
    assert instantiated == [1]


def test_the_helper_out_of_memory_is_the_nodes_fault_not_the_functions() -> None:
    out = bytearray(native_invoke._OUT.size)
    struct.pack_into("<q", out, 0, native_invoke.OUT_OF_MEMORY)  # edge_out's first field: stage
    with pytest.raises(NodeOutOfMemory, match="could not allocate its buffers") as caught:
        native_invoke.outcome_at(memoryview(out), 0)
    status, _, body = http.error_parts(caught.value, "req-oom")
    assert status == 503
    assert json.loads(body) == {
        "error": "node_out_of_memory", "request_id": "req-oom",
        "message": "the native invoke helper could not allocate its buffers",
    }  # fmt: skip
