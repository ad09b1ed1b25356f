"""waitclamp: clock waits given 0 in process (core modules run with recording host imports,
modules that take a clock function as a value refused), and through a real node: a Python
function's time.sleep returns at once, and spinning on the clock meets the deadline."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import wasmtime

from edge.errors import ComponentRejected
from edge.sandbox import clockflow, growcheck, waitclamp
from edge.sandbox.compile_cache import CompileCache
from edge.sandbox.engine import EngineSettings, SandboxEngine
from edge.sandbox.wasm_decode import COMPONENT_PREAMBLE, encode_uleb

from .conftest import EXAMPLES, Proc, fixture_routes

CLOCK = "wasi:clocks/monotonic-clock@0.2.3"
IMPORTS = f"""
  (import "{CLOCK}" "subscribe-duration" (func $duration (param i64) (result i32)))
  (import "{CLOCK}" "subscribe-instant" (func $instant (param i64) (result i32)))
  (import "{CLOCK}" "now" (func $now (result i64)))
"""
FIVE_S = 5_000_000_000


def wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def run(module: bytes, export: str) -> list[tuple[str, int]]:
    """Calls `export`; what the clock imports were called with."""
    config = wasmtime.Config()
    config.wasm_tail_call = True
    engine = wasmtime.Engine(config)
    store = wasmtime.Store(engine)
    calls: list[tuple[str, int]] = []
    i64_to_i32 = wasmtime.FuncType([wasmtime.ValType.i64()], [wasmtime.ValType.i32()])

    def recorder(name: str) -> wasmtime.Func:
        def record(arg: int) -> int:
            calls.append((name, arg))
            return 7

        return wasmtime.Func(store, i64_to_i32, record)

    now = wasmtime.Func(store, wasmtime.FuncType([], [wasmtime.ValType.i64()]), lambda: 1000)
    linker = wasmtime.Linker(engine)
    linker.define(store, CLOCK, "subscribe-duration", recorder("duration"))
    linker.define(store, CLOCK, "subscribe-instant", recorder("instant"))
    linker.define(store, CLOCK, "now", now)
    instance = linker.instantiate(store, wasmtime.Module(engine, module))
    func = instance.exports(store)[export]
    assert isinstance(func, wasmtime.Func)
    assert func(store) == 7
    return calls


WAIT_FUNCS = f"""
  (func (export "both") (result i32)
    (drop (call $duration (i64.const {FIVE_S})))
    (call $instant (i64.add (call $now) (i64.const {FIVE_S}))))
  (func (export "tail") (result i32)
    (return_call $duration (i64.const {FIVE_S})))
  (func (export "untouched") (result i32)
    (drop (call $now))
    (i32.const 7))"""
WAITS = wat(f"(module {IMPORTS} {WAIT_FUNCS})")


def test_calls_of_the_clock_subscriptions_get_zero() -> None:
    assert run(WAITS, "both") == [("duration", FIVE_S), ("instant", 1000 + FIVE_S)]
    clamped = waitclamp.clamp(WAITS)
    assert clamped.sites == 3 and clamped.skipped == []
    assert run(clamped.wasm, "both") == [("duration", 0), ("instant", 0)]
    assert run(clamped.wasm, "tail") == [("duration", 0)]
    assert run(clamped.wasm, "untouched") == []


def test_a_module_without_clock_waits_is_kept_byte_for_byte() -> None:
    module = wat(f"""(module
      (import "{CLOCK}" "now" (func $now (result i64)))
      (func (export "f") (result i64) (call $now)))""")
    assert waitclamp.clamp(module).wasm is module
    # Same names under another interface are not the clock's.
    other = wat("""(module
      (import "wasi:clocks/wall-clock@0.2.3" "subscribe-duration" (func (param i64) (result i32)))
      (func (export "f") (result i32) (call 0 (i64.const 1))))""")
    assert waitclamp.clamp(other).wasm is other


def test_a_call_written_with_a_padded_index_is_found() -> None:
    # The call of function 0 encoded as 0x80 0x80 0x00: bytes no minimal-LEB search sees.
    i64_to_i32 = b"\x60\x01\x7e\x01\x7f"
    unit = b"\x60\x00\x01\x7f"
    body = b"\x00" + b"\x42" + _sleb(FIVE_S) + b"\x10\x80\x80\x00" + b"\x0b"
    module = (
        b"\0asm\x01\x00\x00\x00"
        + _section(1, b"\x02" + i64_to_i32 + unit)
        + _section(2, b"\x01" + _name(CLOCK) + _name("subscribe-duration") + b"\x00\x00")
        + _section(3, b"\x01\x01")
        + _section(7, b"\x01" + _name("f") + b"\x00\x01")
        + _section(10, b"\x01" + encode_uleb(len(body)) + body)
    )
    assert run(module, "f") == [("duration", FIVE_S)]
    clamped = waitclamp.clamp(module)
    assert clamped.sites == 1
    assert run(clamped.wasm, "f") == [("duration", 0)]


@pytest.mark.parametrize(
    "taken",
    [
        '(export "leak" (func $duration))',
        "(table 1 funcref) (elem (i32.const 0) $duration)",
        "(table 1 funcref) (elem (i32.const 0) funcref (ref.func $instant))",
        "(global funcref (ref.func $duration))",
        "(elem declare func $instant)",
    ],
)
def test_a_clock_subscription_taken_as_a_value_is_refused(taken: str) -> None:
    module = wat(f"(module {IMPORTS} {taken})")
    with pytest.raises(waitclamp.ClockAddressTaken, match="as a value"):
        waitclamp.clamp(module)


def test_the_node_refuses_such_a_component_when_it_loads(tmp_path: Path) -> None:
    module = wat(f'(module {IMPORTS} (export "leak" (func $duration)))')
    engine = SandboxEngine()
    try:
        with pytest.raises(ComponentRejected, match="clock waits must be plain calls"):
            CompileCache(engine, tmp_path).load(module)
    finally:
        engine.close()


def test_an_undecodable_module_is_kept_and_reported() -> None:
    module = wat(f"""(module {IMPORTS}
      (func (export "f") (result i32) (call $duration (i64.const 1))))""")
    broken = module[:-3]  # the code section runs past the end
    clamped = waitclamp.clamp(broken)
    assert clamped.wasm is broken and clamped.sites == 0
    assert clamped.skipped and "past the end" in clamped.skipped[0]


def test_the_examples_clock_waits_are_clamped(built: Callable[[Path], Path]) -> None:
    """What each toolchain's output holds: wasi-libc's waits in Python and JavaScript (the
    engine's timers), none in the C examples, and no module left unread."""
    for lang, sites in (("python", 2), ("js", 3), ("c", 0)):
        clamped = waitclamp.clamp(built(EXAMPLES / lang / "hello").read_bytes())
        assert (clamped.sites, clamped.skipped) == (sites, []), lang


@pytest.fixture(scope="module")
def node(start_module_node: Callable[..., Proc], built: Callable[[Path], Path]) -> Proc:
    return start_module_node(fixture_routes(["sleep-py"], built))


@pytest.mark.toolchain
def test_a_python_sleep_returns_at_once(node: Proc) -> None:
    started = time.monotonic()
    r = httpx.get(f"{node.url}/sleep-py/sleep", timeout=30)
    assert r.status_code == 200 and r.text == "sleep True\n"
    # The 5 s sleep held the worker thread for 5 s before, past the 1 s deadline.
    assert time.monotonic() - started < 5


@pytest.mark.toolchain
def test_spinning_on_the_clock_meets_the_deadline_and_the_node_serves_on(node: Proc) -> None:
    started = time.monotonic()
    r = httpx.get(f"{node.url}/sleep-py/spin", timeout=30)
    assert r.status_code == 504 and r.json()["error"] == "deadline_exceeded"
    assert time.monotonic() - started < 5
    assert httpx.get(f"{node.url}/sleep-py/sleep", timeout=30).text == "sleep True\n"


def _sleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40):
            return bytes(out + bytes([byte]))
        out.append(byte | 0x80)


def _name(text: str) -> bytes:
    return encode_uleb(len(text)) + text.encode()


def _section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + encode_uleb(len(payload)) + payload


def test_a_tier_up_reuses_the_first_compiles_rewrite_once(
    built: Callable[[Path], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same bytes' next compile (the tier-up) takes the rewrite kept from the first; only
    once, and only for code large enough to tier up."""
    hello = built(EXAMPLES / "c" / "hello").read_bytes()
    clamps: list[bytes] = []
    real = waitclamp.clamp
    monkeypatch.setattr(waitclamp, "clamp", lambda wasm: clamps.append(wasm) or real(wasm))
    with SandboxEngine(EngineSettings(tier_up_above_bytes=len(hello))) as engine:
        cache = CompileCache(engine, None)
        for _ in range(3):
            cache.compile(hello, engine.engine)
        assert len(clamps) == 2  # the second compile reused the first's
    with SandboxEngine(EngineSettings(tier_up_above_bytes=len(hello) + 1)) as engine:
        cache = CompileCache(engine, None)
        cache.compile(hello, engine.engine)
        cache.compile(hello, engine.engine)
        assert len(clamps) == 4  # too small to tier up: nothing kept


# --- the component's wiring (clockflow) ---------------------------------------------------------

CLOCK_IMPORT = f"""
  (import "{CLOCK}" (instance $clock
    (export "subscribe-duration" (func (param "d" u64) (result u32)))
    (export "subscribe-instant" (func (param "d" u64) (result u32)))))
  (alias export $clock "subscribe-duration" (func $duration))
  (core func $lowered (canon lower (func $duration)))
"""
SLEEPER = """(core module $m
    (import "{module}" "{field}" (func $wait (param i64) (result i32)))
    (func (export "run") (result i32) (call $wait (i64.const 5000000000))))"""


def component(core_export: str = "subscribe-duration", arg: str = CLOCK, extra: str = "") -> bytes:
    return wat(f"""(component {CLOCK_IMPORT}
      (core instance $wasi (export "{core_export}" (func $lowered)))
      {SLEEPER.format(module=arg, field=core_export)}
      (core instance (instantiate $m (with "{arg}" (instance $wasi))))
      {extra})""")


def test_a_lowered_clock_subscription_handed_over_under_its_name_is_followed() -> None:
    assert clockflow.check(component()) == 1
    clamped = waitclamp.clamp(component())
    assert (clamped.sites, clamped.skipped) == (1, [])


@pytest.mark.parametrize(
    ("wiring", "refusal"),
    [
        ({"core_export": "sleep"}, "exported to core modules as b'sleep'"),
        ({"arg": "env"}, "handed to a core module as b'env'"),
    ],
)
def test_a_clock_subscription_under_another_name_is_refused(
    wiring: dict[str, str], refusal: str
) -> None:
    # The module imports it as ("env", ...) or (..., "sleep"): names the rewrite does not see.
    wasm = component(**wiring)
    with pytest.raises(clockflow.ClockFlowRefused, match=re.escape(refusal)):
        clockflow.check(wasm)
    with pytest.raises(waitclamp.ClockAddressTaken, match="must be plain calls"):
        waitclamp.clamp(wasm)


def test_a_clock_subscription_is_followed_through_aliases_and_exports() -> None:
    # Taken back out of the core instance, and the clock interface exported and aliased again:
    # still the clock's, so handing either over under another name is refused.
    again = """(alias core export $wasi "subscribe-duration" (core func $again))
      (core instance (export "tick" (func $again)))"""
    with pytest.raises(clockflow.ClockFlowRefused, match="b'tick'"):
        clockflow.check(component(extra=again))
    exported = """(export $out "re-exported" (instance $clock))
      (alias export $out "subscribe-instant" (func $instant))
      (core func $low (canon lower (func $instant)))
      (core instance (export "later" (func $low)))"""
    with pytest.raises(clockflow.ClockFlowRefused, match="b'later'"):
        clockflow.check(component(extra=exported))


def test_the_clock_interface_carried_into_a_component_instance_is_refused() -> None:
    carried = '(instance (export "f" (func $duration)))'
    with pytest.raises(clockflow.ClockFlowRefused, match="component instance"):
        clockflow.check(component(extra=carried))


def test_the_examples_wiring_is_followed(built: Callable[[Path], Path]) -> None:
    for lang, lowered in (("python", 2), ("js", 2), ("c", 0)):
        assert clockflow.check(built(EXAMPLES / lang / "hello").read_bytes()) == lowered, lang


def test_hostile_bytes_come_back_typed_never_as_a_crash(tmp_path: Path) -> None:
    """Components nested thousands deep (a few kilobytes) used to raise RecursionError from
    both rewrites; every truncation and a flipped byte of a component with clock waits give a
    Clamped or the typed refusal."""
    nested = COMPONENT_PREAMBLE
    for _ in range(3000):
        nested = COMPONENT_PREAMBLE + bytes([4]) + encode_uleb(len(nested)) + nested
    for rewrite in (waitclamp.clamp, growcheck.instrument):
        result = rewrite(nested)
        assert result.wasm is nested and "nested more than" in result.skipped[0]
    with SandboxEngine() as engine, pytest.raises(ComponentRejected, match="not a valid"):
        CompileCache(engine, tmp_path).load(nested)
    wasm = component()
    for cut in range(len(wasm)):
        assert isinstance(waitclamp.clamp(wasm[:cut]).wasm, bytes)
    for at in range(8, len(wasm)):
        flipped = wasm[:at] + bytes([wasm[at] ^ 0xFF]) + wasm[at + 1 :]
        with contextlib.suppress(waitclamp.ClockAddressTaken):
            assert isinstance(waitclamp.clamp(flipped).wasm, bytes)


def test_the_same_code_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every JavaScript function carries the same engine code: its calls are found once, and
    another module with that code section (other data) is rewritten the same way."""
    decoded: list[int] = []
    real = waitclamp.walk_body
    monkeypatch.setattr(
        waitclamp, "walk_body", lambda d, s, e, t: decoded.append(s) or real(d, s, e, t)
    )
    twin = wat(f'(module {IMPORTS} (memory 1) (data (i32.const 0) "other data") {WAIT_FUNCS})')
    waitclamp._SITES.clear()
    first = waitclamp.clamp(WAITS)
    assert decoded
    decoded.clear()
    assert waitclamp.clamp(WAITS).wasm == first.wasm
    clamped_twin = waitclamp.clamp(twin)
    assert decoded == [] and clamped_twin.sites == 3
    assert run(clamped_twin.wasm, "both") == [("duration", 0), ("instant", 0)]


def test_a_load_lets_go_of_the_kept_rewrite(built: Callable[[Path], Path], tmp_path: Path) -> None:
    """A tier-up loads through CompileCache.load: whether it compiles or finds the artifact,
    the rewrite kept for its bytes (two copies of a component) is let go."""
    hello = built(EXAMPLES / "c" / "hello").read_bytes()
    with SandboxEngine(EngineSettings(tier_up_above_bytes=len(hello))) as engine:
        cache = CompileCache(engine, tmp_path)
        cache.compile(hello, engine.engine)  # the baseline compile keeps its rewrite
        assert cache._last_rewrite is not None
        cache.load(hello)
        assert cache._last_rewrite is None
        cache.compile(hello, engine.engine)
        cache.load(hello)  # from the file this time
        assert cache._last_rewrite is None


UNREADABLE = wat(f"""(component {CLOCK_IMPORT}
  (core instance $wasi (export "subscribe-duration" (func $lowered)))
  (core module $m
    (import "{CLOCK}" "subscribe-duration" (func $wait (param i64) (result i32)))
    (type $ft (func (param i32) (result i32)))
    (type $ct (cont $ft))
    (func $f (param i32) (result i32) (local.get 0))
    (elem declare func $f)
    (func (export "go")
      (drop (call $wait (i64.const {FIVE_S})))
      (drop (cont.new $ct (ref.func $f)))))
  (core instance (instantiate $m (with "{CLOCK}" (instance $wasi)))))""")


def stack_switching() -> wasmtime.Engine:
    config = wasmtime.Config()
    config.wasm_component_model = True
    config.wasm_stack_switching = True
    config.wasm_function_references = True
    return wasmtime.Engine(config)


def test_clock_waits_left_as_they_are_are_reported_and_still_compile(tmp_path: Path) -> None:
    # A proposal the decoder does not know (stack switching) in a body that waits on the clock.
    warnings: list[str] = []
    with SandboxEngine() as engine:
        CompileCache(engine, tmp_path).load(UNREADABLE, engine=stack_switching(),
                                            warn=warnings.append)  # fmt: skip
    (warning,) = warnings
    assert warning.startswith("clock waits left as they are in core module 0: unknown instruction")
    assert warning.endswith("a wait there holds its thread past the deadline")


def test_a_rewrite_the_engine_refuses_falls_back_to_the_original_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our bug, not the function's: it still compiles, unrewritten, with both rewrites' words."""
    monkeypatch.setattr(waitclamp, "clamp", lambda wasm: waitclamp.Clamped(wasm[:-1], sites=1))
    warnings: list[str] = []
    with SandboxEngine() as engine:
        compiled = CompileCache(engine, tmp_path).load(component(), warn=warnings.append)
    assert compiled is not None
    assert len(warnings) == 2
    assert warnings[0].startswith("memory.grow left unchecked everywhere: the rewritten component")
    assert warnings[1].startswith("clock waits left as they are everywhere: the rewritten")
    assert warnings[1].endswith("a wait there holds its thread past the deadline")
