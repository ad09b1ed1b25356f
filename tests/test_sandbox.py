"""The sandbox in process: loading checks, compile cache, limits, isolation, typed errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import wasmtime

from edge.config.function import FunctionConfig, InstancePolicy, load_function_config
from edge.errors import (
    ComponentRejected,
    DeadlineExceeded,
    FunctionError,
    FunctionTrapped,
    InvalidResponse,
    MemoryLimitExceeded,
    ResponseTooLarge,
)
from edge.sandbox import abi, growcheck, host, waitclamp
from edge.sandbox.compile_cache import CompileCache
from edge.sandbox.engine import EngineSettings, SandboxEngine
from edge.sandbox.function import LoadedFunction
from edge.sandbox.native_invoke import INVOKES

from .conftest import COMPILED, EXAMPLES, FIXTURES, ROOMY_DEADLINE_MS, with_deadline

pytestmark = pytest.mark.toolchain


@pytest.fixture(scope="module", params=INVOKES)
def engine(request: pytest.FixtureRequest) -> Iterator[SandboxEngine]:
    """Every test on both request paths (see native_invoke): C functions take the native one
    unless it is "python"; the others always take the Python one."""
    with SandboxEngine(EngineSettings(pool_total_instances=64, invoke=request.param)) as e:
        assert e.invoke_summary == request.param  # the helper is built and loaded here
        yield e


Loader = Callable[..., LoadedFunction]


@pytest.fixture
def load(
    engine: SandboxEngine, tmp_path: Path, built: Callable[[Path], Path], lines: list[host.LogLine]
) -> Loader:
    cache = CompileCache(engine, COMPILED)

    def go(project: Path, config: FunctionConfig | None = None) -> LoadedFunction:
        wasm = built(project).read_bytes()
        return LoadedFunction(
            engine, cache, wasm, config or load_function_config(project), lines.append
        )

    return go


def request(body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> abi.GuestRequest:
    return abi.GuestRequest(
        method="POST",
        url="http://example.com/path?q=1",
        headers=headers
        if headers is not None
        else [("host", "example.com"), ("x-a", "1"), ("x-a", "2")],
        body=body,
        client_ip="81.2.69.142",
        region="eu-west",
        node_id="node-7",
        request_id="req-1",
        geo=abi.Geo("GB", "EU", "London", 51.5142, -0.0931),
    )


def invoke(
    fn: LoadedFunction, req: abi.GuestRequest, lines: list[host.LogLine]
) -> abi.GuestResponse:
    return fn.invoke(req, host.Invocation(fn.name, req.request_id, fn.config.config, lines.append))


def wat_component(name: str) -> bytes:
    return bytes(wasmtime.wat2wasm((FIXTURES / "components" / f"{name}.wat").read_text()))


# --- loading ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("forbidden_import", r"imports `evil:net/raw-socket@1.0.0`, which is outside"),
        ("wrong_export", r"`edge:function/handler@0.1.0#handle` has the wrong shape"),
        ("no_export", r"does not export `edge:function/handler@0.1.0`"),
    ],
)
def test_bad_components_rejected_at_load(
    engine: SandboxEngine, tmp_path: Path, fixture: str, message: str
) -> None:
    cache = CompileCache(engine, tmp_path)
    with pytest.raises(ComponentRejected, match=message):
        LoadedFunction(engine, cache, wat_component(fixture), FunctionConfig(name="x"), print)


@pytest.mark.parametrize(
    "junk", [b"", b"\0asm\x01\0\0\0", b"not wasm at all", b"\0asm\r\0\x01\0garbage"]
)
def test_corrupt_bytes_rejected(engine: SandboxEngine, tmp_path: Path, junk: bytes) -> None:
    with pytest.raises(ComponentRejected, match="not a valid WebAssembly component"):
        LoadedFunction(
            engine, CompileCache(engine, tmp_path), junk, FunctionConfig(name="x"), print
        )


def test_compile_cache_survives_restart_and_corruption(
    engine: SandboxEngine, tmp_path: Path, built: Callable[[Path], Path]
) -> None:
    wasm = built(EXAMPLES / "c" / "hello").read_bytes()
    first = CompileCache(engine, tmp_path)
    first.load(wasm)
    assert (first.stats.hits, first.stats.misses) == (0, 1)
    # A "restarted node": a new cache object over the same directory does not recompile.
    second = CompileCache(engine, tmp_path)
    second.load(wasm)
    assert (second.stats.hits, second.stats.misses) == (1, 0)
    # A corrupt artifact is recompiled and replaced, not trusted.
    (artifact,) = tmp_path.glob("*.cwasm")
    artifact.write_bytes(b"garbage")
    third = CompileCache(engine, tmp_path)
    third.load(wasm)
    assert third.stats.misses == 1 and artifact.read_bytes() != b"garbage"


def test_a_compile_cache_directory_taken_away_still_loads_code(
    engine: SandboxEngine,
    tmp_path: Path,
    built: Callable[[Path], Path],
    lines: list[host.LogLine],
) -> None:
    """The directory gone after the node started: the function loads and serves from memory,
    compiled once, with a warning; once the directory is back the code is kept. (A full disk,
    where the lock is taken and the file cannot be written: test_node's full compile cache
    disk.)"""
    wasm = built(EXAMPLES / "c" / "hello").read_bytes()
    directory = tmp_path / "compiled"
    cache = CompileCache(engine, directory)
    directory.rmdir()
    directory.write_text("a file where the cache directory goes\n")
    compiles: list[int] = []
    compile_once = cache.compile

    def counted(*args: Any, **kwargs: Any) -> wasmtime.component.Component:
        compiles.append(1)
        return compile_once(*args, **kwargs)

    cache.compile = counted  # type: ignore[method-assign]
    fn = LoadedFunction(engine, cache, wasm, FunctionConfig(name="hello"), lines.append)
    assert invoke(fn, request(), lines).body.startswith(b"Hello from C!")
    assert len(compiles) == 1 and cache.stats.unstored == 1
    (warning,) = [line.message for line in lines if line.source == "platform"]
    assert "cannot keep compiled code" in warning and "Not a directory" in warning
    directory.unlink()
    again = CompileCache(engine, directory)
    LoadedFunction(engine, again, wasm, FunctionConfig(name="hello"), lines.append)
    assert again.stats.unstored == 0 and len(list(directory.glob("*.cwasm"))) == 1


def test_nodes_sharing_a_cache_directory_compile_a_component_once(
    engine: SandboxEngine, tmp_path: Path, built: Callable[[Path], Path]
) -> None:
    """Eight "nodes" (cache objects over one directory) get the same new component at once:
    one compiles it, the others map its result."""
    wasm = built(EXAMPLES / "c" / "hello").read_bytes()
    caches = [CompileCache(engine, tmp_path) for _ in range(8)]
    start = threading.Barrier(len(caches))

    def node(cache: CompileCache) -> None:
        start.wait()
        cache.load(wasm)

    threads = [threading.Thread(target=node, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(c.stats.misses for c in caches) == 1
    assert sum(c.stats.hits for c in caches) == len(caches) - 1
    assert len(list(tmp_path.glob("*.cwasm"))) == 1


def test_cache_key_includes_engine_settings(engine: SandboxEngine, tmp_path: Path) -> None:
    other = SandboxEngine(EngineSettings(max_wasm_stack_bytes=256 * 1024, pooling=False))
    try:
        digest = "ab" * 32
        assert CompileCache(engine, tmp_path).path_for(digest) != CompileCache(
            other, tmp_path
        ).path_for(digest)
    finally:
        other.close()


@pytest.mark.parametrize("rewrite", [growcheck, waitclamp])
def test_cache_key_includes_the_rewrite_version(
    engine: SandboxEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rewrite: ModuleType
) -> None:
    """Artifacts compiled before a change to a rewrite are not reused after it."""
    before = CompileCache(engine, tmp_path).path_for("ab" * 32)
    monkeypatch.setattr(rewrite, "VERSION", rewrite.VERSION + 1)
    assert CompileCache(engine, tmp_path).path_for("ab" * 32) != before


def test_module_left_unchecked_is_reported_and_still_compiles(
    engine: SandboxEngine, tmp_path: Path
) -> None:
    # A proposal the decoder does not know (stack switching) in a module that grows memory.
    component = bytes(
        wasmtime.wat2wasm("""(component (core module
          (type $ft (func (param i32) (result i32)))
          (type $ct (cont $ft))
          (memory 1)
          (func $f (param i32) (result i32) (memory.grow (local.get 0)))
          (elem declare func $f)
          (func (export "go") (drop (cont.new $ct (ref.func $f))))))""")
    )
    config = wasmtime.Config()
    config.wasm_component_model = True
    config.wasm_stack_switching = True
    config.wasm_function_references = True
    warnings: list[str] = []
    cache = CompileCache(engine, tmp_path)
    cache.load(component, engine=wasmtime.Engine(config), warn=warnings.append)
    (warning,) = warnings
    assert "left unchecked in core module 0: unknown composite type 0x5d" in warning
    assert "a memory-limit hit there is a trap" in warning


# --- requests -----------------------------------------------------------------------------------


def roomy(project: Path) -> FunctionConfig:
    """The project's config with a deadline of ROOMY_DEADLINE_MS (see there)."""
    return with_deadline(load_function_config(project), ROOMY_DEADLINE_MS)


@pytest.mark.parametrize("lang", ["c", "python", "js"])
def test_echo_sees_the_whole_request(load: Loader, lines: list[host.LogLine], lang: str) -> None:
    fn = load(EXAMPLES / lang / "echo", roomy(EXAMPLES / lang / "echo"))
    body = bytes(range(256)) * 4
    resp = invoke(fn, request(body=b"hello \xe2\x9c\x93"), lines)
    assert resp.status == 200
    data = json.loads(resp.body)
    assert data["method"] == "POST"
    assert data["url"] == "http://example.com/path?q=1"
    assert [h for h in data["headers"] if h[0] == "x-a"] == [["x-a", "1"], ["x-a", "2"]]
    assert data["body"] == "hello ✓"
    assert data["client_ip"] == "81.2.69.142"
    assert (data["region"], data["node_id"], data["request_id"]) == ("eu-west", "node-7", "req-1")
    assert data["geo"]["country"] == "GB" and data["geo"]["city"] == "London"
    assert data["geo"]["latitude"] == pytest.approx(51.5142)
    assert body  # binary bodies are covered in test_binary_body_round_trip


def test_binary_body_round_trip(
    engine: SandboxEngine, load: Loader, lines: list[host.LogLine]
) -> None:
    fn = load(FIXTURES / "functions" / "mirror")
    body = bytes(range(256)) * 4097  # ~1 MiB, every byte value
    resp = invoke(fn, request(body=body), lines)
    assert resp.body == body
    # The native path's thread buffers shrink again after a large request, and keep no trace.
    assert invoke(fn, request(body=b"\xff\x00"), lines).body == b"\xff\x00"
    assert invoke(fn, request(), lines).body == b""


def test_config_and_log_imports(load: Loader, lines: list[host.LogLine]) -> None:
    fn = load(EXAMPLES / "c" / "config")
    resp = invoke(fn, request(), lines)
    assert resp.status == 200 and fn.config.config["greeting"].encode() in resp.body
    assert any(line.source == "log" and line.request_id == "req-1" for line in lines)


def test_c_sdk_allocator_past_its_arena(load: Loader, lines: list[host.LogLine]) -> None:
    # Headers grown one by one (copied inside the arena) and blocks that cross from the static
    # arena into malloc: every byte must be where the function put it.
    fn = load(FIXTURES / "functions" / "arena")
    for _ in range(2):  # and again in a fresh instance
        resp = invoke(fn, request(), lines)
        assert resp.status == 200
        assert resp.body == b" ".join(str(ord(c) * 100 * 1024).encode() for c in "abc")
        assert resp.headers == [(f"x-h{i}", f"h{i}") for i in range(120)]


# --- hostile functions ----------------------------------------------------------------------------


def test_infinite_loop_hits_deadline(load: Loader, lines: list[host.LogLine]) -> None:
    fn = load(FIXTURES / "functions" / "loop")
    with pytest.raises(DeadlineExceeded, match="deadline of 100 ms") as info:
        invoke(fn, request(), lines)
    assert info.value.message.endswith("([limits] deadline_ms in edge.toml)")


@pytest.mark.parametrize("name", ["membomb", "recursion", "trap"])
def test_traps_are_function_errors(load: Loader, lines: list[host.LogLine], name: str) -> None:
    fn = load(FIXTURES / "functions" / name)
    with pytest.raises(FunctionError) as info:
        invoke(fn, request(), lines)
    assert info.value.status == 500
    assert not isinstance(info.value, DeadlineExceeded)


def test_memory_limit_stops_the_function(load: Loader, lines: list[host.LogLine]) -> None:
    """Growth past the limit ends the request at the refused memory.grow: the function never
    gets to answer how far it got (its "report" mode)."""
    fn = load(FIXTURES / "functions" / "membomb")
    assert fn.config.limits.memory_limit_bytes == 32 * 1024 * 1024  # from its edge.toml
    req = abi.GuestRequest("GET", "http://x/report", [], b"", "127.0.0.1", "r", "n", "id")
    with pytest.raises(MemoryLimitExceeded, match="memory limit of 32 MiB while running") as info:
        invoke(fn, req, lines)
    assert info.value.status == 500 and info.value.reason == "memory_limit"
    assert info.value.message.endswith("([limits] memory_limit_mib in edge.toml)")


def test_memory_over_the_limit_at_instantiation(load: Loader, lines: list[host.LogLine]) -> None:
    fn = load(FIXTURES / "functions" / "bigmemory")
    with pytest.raises(MemoryLimitExceeded, match="32 MiB while instantiating: memory minimum"):
        invoke(fn, request(), lines)


@pytest.mark.parametrize("name", ["membomb-py", "membomb-js"])
def test_runtime_allocating_past_its_limit_is_stopped(
    load: Loader, lines: list[host.LogLine], name: str
) -> None:
    """CPython and SpiderMonkey turn a refused allocation into an exception the function
    catches and carries on from (these fixtures answer 200 if they can)."""
    fn = load(FIXTURES / "functions" / name)
    with pytest.raises(MemoryLimitExceeded, match="memory limit of 64 MiB while running"):
        invoke(fn, request(), lines)


def test_recursion_reports_stack(load: Loader, lines: list[host.LogLine]) -> None:
    with pytest.raises(FunctionTrapped, match="stack"):
        invoke(load(FIXTURES / "functions" / "recursion"), request(), lines)


def test_oversized_response(load: Loader, lines: list[host.LogLine]) -> None:
    with pytest.raises(ResponseTooLarge, match="exceeds the limit of 1048576 bytes") as info:
        invoke(load(FIXTURES / "functions" / "bigresponse"), request(), lines)
    assert info.value.message.endswith("([limits] response_body_limit_bytes in edge.toml)")


def test_body_code_point_above_ff(load: Loader, lines: list[host.LogLine]) -> None:
    # The fixture writes the ABI by hand: bodies carry bytes as U+0000..U+00FF only.
    with pytest.raises(InvalidResponse, match=r"body holds code point U\+0100"):
        invoke(load(FIXTURES / "functions" / "rawbody"), request(), lines)


def test_bad_status(load: Loader, lines: list[host.LogLine]) -> None:
    with pytest.raises(InvalidResponse, match="status 42"):
        invoke(load(FIXTURES / "functions" / "badstatus"), request(), lines)


def test_fresh_instances_share_nothing(load: Loader, lines: list[host.LogLine]) -> None:
    fn = load(FIXTURES / "functions" / "counter")
    counts = [invoke(fn, request(), lines).body for _ in range(3)]
    assert counts == [b"1", b"1", b"1"]


def test_reuse_policy_keeps_state_and_recycles(load: Loader, lines: list[host.LogLine]) -> None:
    project = FIXTURES / "functions" / "counter"
    base = load_function_config(project)
    config = FunctionConfig(
        name=base.name,
        lang=base.lang,
        source=base.source,
        instance=InstancePolicy("reuse", reuse_max_requests=3),
    )
    fn = load(project, config)
    counts = [invoke(fn, request(), lines).body for _ in range(7)]
    assert counts == [b"1", b"2", b"3", b"1", b"2", b"3", b"1"]


def test_node_keeps_working_after_every_hostile_function(
    load: Loader, lines: list[host.LogLine]
) -> None:
    hello = load(EXAMPLES / "c" / "hello")
    for name in ["loop", "membomb", "recursion", "trap", "bigresponse", "badstatus"]:
        with pytest.raises(FunctionError):
            invoke(load(FIXTURES / "functions" / name), request(), lines)
        assert invoke(hello, request(), lines).status == 200


# --- the Winch compiler (edge dev's default) ------------------------------------------------------


@pytest.fixture(scope="module")
def winch() -> Iterator[SandboxEngine]:
    with SandboxEngine(EngineSettings(pool_total_instances=16, compiler="winch")) as e:
        yield e


def test_compiler_is_part_of_the_cache_key() -> None:
    assert EngineSettings().fingerprint() != EngineSettings(compiler="winch").fingerprint()
    with pytest.raises(ValueError, match="compiler must be one of cranelift, winch, got 'llvm'"):
        EngineSettings(compiler="llvm")


@pytest.mark.parametrize(
    ("lang", "text"),
    [("c", "Hello from C!"), ("python", "Hello from Python!"), ("js", "Hello from JavaScript!")],
)
def test_winch_runs_every_language(
    winch: SandboxEngine,
    built: Callable[[Path], Path],
    lines: list[host.LogLine],
    lang: str,
    text: str,
) -> None:
    project = EXAMPLES / lang / "hello"
    cache = CompileCache(winch, COMPILED)
    fn = LoadedFunction(winch, cache, built(project).read_bytes(), roomy(project), lines.append)
    assert text in invoke(fn, request(), lines).body.decode()


def test_winch_code_keeps_the_limits(
    winch: SandboxEngine, built: Callable[[Path], Path], lines: list[host.LogLine]
) -> None:
    cache = CompileCache(winch, COMPILED)

    def load_winch(name: str) -> LoadedFunction:
        project = FIXTURES / "functions" / name
        wasm = built(project).read_bytes()
        return LoadedFunction(winch, cache, wasm, load_function_config(project), lines.append)

    with pytest.raises(DeadlineExceeded):
        invoke(load_winch("loop"), request(), lines)
    with pytest.raises(MemoryLimitExceeded):
        invoke(load_winch("membomb"), request(), lines)
    with pytest.raises(FunctionTrapped, match="stack"):
        invoke(load_winch("recursion"), request(), lines)
