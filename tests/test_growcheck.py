"""growcheck and wasm_decode in process: LEB128, the instruction decoder over every proposal we
claim, the module and component rewrite, and what the rewritten code does when run."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import wasmtime
from hypothesis import example, given
from hypothesis import strategies as st
from wasmtime import component as cm

from edge.build.toolchain import Toolchain
from edge.sandbox import growcheck
from edge.sandbox.wasm_decode import (
    CALL,
    COMPONENT_PREAMBLE,
    Undecodable,
    encode_uleb,
    grow_sites,
    read_uleb,
)

from .conftest import EXAMPLES, FIXTURES

PAGE = 65536


def wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def engine(**features: bool) -> wasmtime.Engine:
    config = wasmtime.Config()
    for name, on in features.items():
        setattr(config, name, on)
    return wasmtime.Engine(config)


def run(
    module: bytes, export: str, *args: int, limit_bytes: int = 4 * PAGE, **features: bool
) -> int:
    e = engine(**features)
    store = wasmtime.Store(e)
    store.set_limits(memory_size=limit_bytes)
    instance = wasmtime.Instance(store, wasmtime.Module(e, module), [])
    func = instance.exports(store)[export]
    assert isinstance(func, wasmtime.Func)
    result = func(store, *args)
    assert isinstance(result, int)
    return result


def trap_frames(module: bytes, export: str, *args: int, **features: bool) -> list[str | None]:
    with pytest.raises(wasmtime.Trap) as info:
        run(module, export, *args, **features)
    return [f.func_name for f in info.value.frames]


def module_bodies(module: bytes) -> list[tuple[int, int]]:
    """(start, end) of every function body, found by walking the sections by hand."""
    pos = 8
    while pos < len(module):
        size, start = read_uleb(module, pos + 1)
        if module[pos] == 10:
            count, at = read_uleb(module, start)
            bodies = []
            for _ in range(count):
                body_size, body = read_uleb(module, at)
                bodies.append((body, body + body_size))
                at = body + body_size
            return bodies
        pos = start + size
    return []


# --- LEB128 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 63, 64, 127, 128, 624485, 2**32 - 1, 2**64 - 1])
def test_leb_round_trip(value: int) -> None:
    encoded = encode_uleb(value)
    assert read_uleb(encoded + b"\xff", 0) == (value, len(encoded))


def test_leb_padded_and_bad() -> None:
    assert read_uleb(b"\x80\x80\x00", 0) == (0, 3)  # padded encodings are legal in wasm
    assert encode_uleb(624485) == b"\xe5\x8e\x26"
    with pytest.raises(Undecodable, match="truncated"):
        read_uleb(b"\x80\x80", 0)
    with pytest.raises(Undecodable, match="too long"):
        read_uleb(b"\x80" * 10 + b"\x00", 0)
    with pytest.raises(ValueError):
        encode_uleb(-1)


# --- modules --------------------------------------------------------------------------------------

NO_GROW = """(module (memory 1) (func (export "f") (result i32)
  (i32.store (i32.const 0) (i32.const 0x40)) (i32.load (i32.const 0)) (memory.size) (i32.add)))"""

GROWERS = """(module
  (memory 1)
  (func $a (export "a") (param i32) (result i32) (memory.grow (local.get 0)))
  (func $plain (export "plain") (result i32) (i32.const 0x40))
  (func $b (export "b") (param i32) (result i32)
    (drop (memory.grow (i32.const 0))) (memory.grow (local.get 0)))
  (func $c (export "c") (result i32) (call $a (i32.const 100))))"""


def test_module_without_grow_is_kept_byte_for_byte() -> None:
    module = wat(NO_GROW)
    result = growcheck.instrument(module)
    assert result.wasm == module and (result.modules, result.sites, result.skipped) == (0, 0, [])


def test_grow_in_several_bodies_is_checked() -> None:
    module = wat(GROWERS)
    result = growcheck.instrument(module)
    assert (result.modules, result.sites, result.skipped) == (1, 3, [])
    rewritten = result.wasm
    wasmtime.Module.validate(engine(), rewritten)
    # Each memory.grow is followed by a call of the check, the function after the four.
    check_call = bytes([CALL]) + encode_uleb(4)
    bodies = module_bodies(rewritten)
    assert len(bodies) == 5
    for start, end in bodies[:4]:
        for after, _ in grow_sites(rewritten, start, end):
            assert rewritten[after : after + len(check_call)] == check_call
    # Growth within the limit passes the old size through; past it, the check traps.
    assert run(rewritten, "a", 1) == 1
    assert run(rewritten, "b", 2) == 1
    assert run(rewritten, "plain") == 0x40
    assert trap_frames(rewritten, "a", 100) == [growcheck.CHECK_NAME, "a"]
    assert trap_frames(rewritten, "c") == [growcheck.CHECK_NAME, "a", "c"]
    # Without the rewrite the guest just sees -1.
    assert run(module, "a", 100) == -1


def test_names_of_the_module_are_kept() -> None:
    # A name section with module, function and local names: the checks join the function names.
    module = wat(GROWERS.replace("(module", "(module $named", 1))
    rewritten = growcheck.instrument(module).wasm
    assert trap_frames(rewritten, "a", 100) == [growcheck.CHECK_NAME, "a"]
    # Without function names (only the module's), a function-names subsection is added.
    bare = wat("""(module $bare (memory 1)
      (func (export "g") (param i32) (result i32) (memory.grow (local.get 0))))""")
    assert b"\x04name" in bare
    assert trap_frames(growcheck.instrument(bare).wasm, "g", 100) == [growcheck.CHECK_NAME, None]


def test_module_without_name_section_gets_one() -> None:
    module = wat("""(module (memory 1)
      (func (export "g") (param i32) (result i32) (memory.grow (local.get 0))))""")
    assert b"\x04name" not in module
    rewritten = growcheck.instrument(module).wasm
    assert trap_frames(rewritten, "g", 100) == [growcheck.CHECK_NAME, None]


def test_memory64_gets_a_64_bit_check() -> None:
    module = wat("""(module (memory i64 1)
      (func $g (export "g") (param i64) (result i64) (memory.grow (local.get 0))))""")
    result = growcheck.instrument(module)
    assert result.sites == 1
    assert run(result.wasm, "g", 1, wasm_memory64=True) == 1
    assert trap_frames(result.wasm, "g", 100, wasm_memory64=True) == [
        growcheck.CHECK_NAME + "64",
        "g",
    ]


def test_several_memories_each_get_their_index_type() -> None:
    module = wat("""(module
      (import "env" "mem" (memory $imported 1))
      (memory $small 1)
      (memory $wide i64 1)
      (func $g (export "g") (param i32) (result i32)
        (drop (memory.grow $wide (i64.extend_i32_u (local.get 0))))
        (memory.grow $small (local.get 0))))""")
    result = growcheck.instrument(module)
    assert (result.modules, result.sites) == (1, 2)
    e = engine(wasm_memory64=True, wasm_multi_memory=True)
    wasmtime.Module.validate(e, result.wasm)
    # Both check types were appended, in 32-then-64 order, after the module's own function.
    (_, (start32, _), (start64, _)) = module_bodies(result.wasm)
    assert result.wasm[start32 + 3 : start32 + 6] == b"\x41\x7f\x46"  # i32.const -1; i32.eq
    assert result.wasm[start64 + 3 : start64 + 6] == b"\x42\x7f\x51"  # i64.const -1; i64.eq


def test_unknown_opcode_leaves_the_module_alone() -> None:
    # Stack switching (cont.new) is a proposal the decoder does not know.
    module = wat("""(module
      (type $ft (func (param i32) (result i32)))
      (type $ct (cont $ft))
      (memory 1)
      (func $f (param i32) (result i32) (memory.grow (local.get 0)))
      (elem declare func $f)
      (func (export "go") (result i32)
        (drop (cont.new $ct (ref.func $f)))
        (memory.grow (i32.const 100))))""")
    result = growcheck.instrument(module)
    assert result.wasm == module and result.modules == 0
    (reason,) = result.skipped
    assert "core module 0: unknown instruction 0xe0" in reason
    e = engine(wasm_stack_switching=True, wasm_function_references=True)
    wasmtime.Module.validate(e, result.wasm)  # (wasmtime 50 compiles it but cannot run it)


# Every instruction family the decoder claims, with a memory.grow after each so that a
# mis-decoded immediate would lose or invent a site (or fail the size check).
PROPOSALS = r"""(module
  (type $pair (func (param i32) (result i32 i32)))
  (type $point (struct (field $x (mut i32)) (field $y i64)))
  (type $bytes (array (mut i8)))
  (rec (type $a (struct (field (ref null $b)))) (type $b (sub (struct))))
  (type $leaf (sub final $b (struct)))
  (tag $oops (param i32))
  (memory $m 1)
  (memory $shared 1 2 shared)
  (table $t 2 funcref)
  (table $r 1 externref)
  (data $d "abc")
  (elem $e func $simd)
  (func $simd (result i32)
    (drop (i32x4.extract_lane 2 (v128.load8_lane 3 (i32.const 0)
      (i8x16.shuffle 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
        (v128.const i32x4 1 2 3 4) (v128.const i64x2 0 0)))))
    (v128.store offset=16 (i32.const 0) (v128.load32_zero (i32.const 4)))
    (drop (f32x4.relaxed_madd
      (v128.const f32x4 0 0 0 0) (v128.const f32x4 0 0 0 0) (v128.const f32x4 0 0 0 0)))
    (memory.grow (i32.const 1)))
  (func $threads (result i32)
    (drop (i32.atomic.rmw.add $shared (i32.const 0) (i32.const 1)))
    (atomic.fence)
    (drop (memory.atomic.notify $shared (i32.const 0) (i32.const 1)))
    (drop (i64.atomic.load $shared offset=8 (i32.const 0)))
    (memory.grow $shared (i32.const 1)))
  (func $bulk (result i32)
    (memory.copy (i32.const 0) (i32.const 8) (i32.const 4))
    (memory.fill (i32.const 0) (i32.const 0) (i32.const 4))
    (memory.init $d (i32.const 0) (i32.const 0) (i32.const 3))
    (data.drop $d)
    (table.init $t $e (i32.const 0) (i32.const 0) (i32.const 1))
    (elem.drop $e)
    (drop (table.grow $t (ref.null func) (i32.const 1)))
    (drop (table.size $r))
    (drop (i32.trunc_sat_f32_s (f32.const 1.5)))
    (drop (i64.extend8_s (i64.const -300)))
    (drop (f64.const 2.25))
    (memory.grow (i32.const 0)))
  (func $refs (param $p i32) (result i32)
    (drop (select (result funcref) (ref.func $simd) (ref.null func) (local.get $p)))
    (drop (ref.is_null (table.get $t (i32.const 0))))
    (block $out (result i32 i32) (call $split (local.get $p)))
    (drop)
    (drop)
    (block $a (block $b (br_table $a $b $a (local.get $p))))
    (if (local.get $p) (then (return_call $simd)))
    (if (i32.eqz (local.get $p)) (then (return_call_indirect $t (result i32) (i32.const 0))))
    (memory.grow (local.get $p)))
  (func $split (type $pair) (local.get 0) (local.get 0))
  (func $exceptions (param $p i32) (result i32)
    (block $none
      (block $caught (result i32)
        (try_table (catch $oops $caught) (catch_all $none)
          (throw $oops (local.get $p)))
        (unreachable))
      (drop))
    (block $caught (result exnref)
      (try_table (catch_all_ref $caught) (throw $oops (i32.const 1)))
      (unreachable))
    (drop)
    (memory.grow (i32.const 1)))
  (func $gc (param $x anyref) (result i32)
    (local $s (ref null $point))
    (local.set $s (struct.new $point (i32.const 1) (i64.const 2)))
    (struct.set $point $x (local.get $s) (i32.const 5))
    (drop (struct.get $point $y (local.get $s)))
    (drop (array.new_fixed $bytes 3 (i32.const 1) (i32.const 2) (i32.const 3)))
    (drop (array.get_u $bytes (array.new_default $bytes (i32.const 4)) (i32.const 0)))
    (drop (ref.test (ref $point) (local.get $x)))
    (drop (block $no (result anyref)
      (br_on_cast_fail $no anyref (ref $point) (local.get $x)) (drop) (ref.null any)))
    (drop (i31.get_s (ref.i31 (i32.const 7))))
    (drop (any.convert_extern (ref.null extern)))
    (memory.grow (i32.const 1))))"""

ALL_FEATURES = {
    "wasm_threads": True,
    "wasm_gc": True,
    "wasm_function_references": True,
    "wasm_exceptions": True,
    "wasm_relaxed_simd": True,
    "wasm_tail_call": True,
    "wasm_multi_memory": True,
}


def test_decoder_walks_every_proposal() -> None:
    module = wat(PROPOSALS)
    result = growcheck.instrument(module)
    assert (result.modules, result.sites, result.skipped) == (1, 6, [])
    wasmtime.Module.validate(engine(**ALL_FEATURES), result.wasm)


def test_legacy_exceptions_decode() -> None:
    # wasmtime does not run these, but toolchains still emit them: they must not hide a grow.
    module = wat("""(module (tag $t) (memory 1)
      (func (result i32)
        try throw $t catch $t catch_all end
        try $outer try nop delegate $outer catch_all rethrow $outer end
        (memory.grow (i32.const 1))))""")
    ((start, end),) = module_bodies(module)
    assert [memory for _, memory in grow_sites(module, start, end)] == [0]


def test_bad_bodies_raise_undecodable() -> None:
    with pytest.raises(Undecodable, match="unknown instruction 0x16"):
        grow_sites(b"\x00\x16\x0b", 0, 3)
    with pytest.raises(Undecodable, match="truncated"):
        grow_sites(b"\x00\x41", 0, 2)
    with pytest.raises(Undecodable, match="does not end at its size"):
        grow_sites(b"\x00\x41\x80\x00\x0b", 0, 3)


@given(st.binary(max_size=64))
@example(b"\x01\x01\x7f\x40\x00\x0b")
@example(b"\x00\xfd\x80\x80\x04")
def test_any_body_decodes_or_raises_undecodable(body: bytes) -> None:
    try:
        sites = grow_sites(body, 0, len(body))
    except Undecodable:
        return
    assert all(0 < after <= len(body) for after, _ in sites)


# --- components and junk --------------------------------------------------------------------------

COMPONENT = f"""(component
  (core module $grows {GROWERS[len("(module") : -1]})
  (core module $quiet {NO_GROW[len("(module") : -1]})
  (component $inner
    (core module $deep (memory 1)
      (func (export "g") (param i32) (result i32) (memory.grow (local.get 0))))))"""


def test_component_modules_and_nested_components_are_rewritten() -> None:
    component = wat(COMPONENT)
    result = growcheck.instrument(component)
    assert (result.modules, result.sites, result.skipped) == (2, 4, [])
    # Sizes re-encoded: it still compiles.
    cm.Component(engine(wasm_component_model=True), result.wasm)
    assert wat(NO_GROW) in result.wasm  # a module without grow is copied byte for byte
    assert growcheck.instrument(result.wasm).sites == 4  # its output parses like its input


def test_junk_comes_back_unchanged_and_never_raises() -> None:
    for junk in [b"", b"not wasm", COMPONENT_PREAMBLE + b"\x01\x7f"]:
        assert growcheck.instrument(junk).wasm == junk
    # Every truncation of a real component: unchanged or rewritten, never an exception.
    component = wat(COMPONENT)
    for cut in range(len(component)):
        prefix = component[:cut]
        result = growcheck.instrument(prefix)
        assert isinstance(result.wasm, bytes)
    for broken in (component[:-3], component + b"junk"):
        result = growcheck.instrument(broken)
        assert result.wasm == broken and result.skipped  # and said why it left it alone


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_any_corrupted_byte_gives_bytes_never_an_exception(at: int, value: int) -> None:
    component = bytearray(wat(COMPONENT))
    component[at % len(component)] = value
    result = growcheck.instrument(bytes(component))
    assert result.modules or result.wasm == bytes(component)


# --- real components ------------------------------------------------------------------------------

PROJECTS = sorted(EXAMPLES.glob("*/*")) + sorted(FIXTURES.glob("functions/*"))


@pytest.mark.toolchain
@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_components_rewrite_to_valid_components(
    project: Path, built: Callable[[Path], Path], tmp_path: Path
) -> None:
    result = growcheck.instrument(built(project).read_bytes())
    assert result.modules >= 1 and result.sites >= 1 and result.skipped == []
    out = tmp_path / "checked.wasm"
    out.write_bytes(result.wasm)
    wasm_tools = Toolchain().wasm_tools()
    done = subprocess.run(
        [*wasm_tools, "validate", str(out)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
