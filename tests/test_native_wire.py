"""wire.c (the loop's side of a native request in C) against native_invoke's Python packer and
reader, which are its reference: the same struct edge_args and blob for requests of any shape,
the same Outcome for plain answers, everything else left to Python's reader; bad input is a
Python exception, never a crash; and without the extension Python serves and says why."""

from __future__ import annotations

import ctypes
import gc
import struct
import subprocess
import sysconfig
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.build.toolchain import Toolchain
from edge.errors import NodeOutOfMemory, ToolchainMissing
from edge.sandbox import abi, native_build, native_invoke
from edge.sandbox.engine import EngineSettings, SandboxEngine
from edge.sandbox.native_invoke import ARGS, Wire

pytestmark = pytest.mark.toolchain

_ARGS_BLOB = 3  # struct edge_args' blob pointer field
_ARGS_CONFIG = 8  # and its config pointer


@pytest.fixture(scope="module")
def wire() -> ModuleType:
    helper = native_invoke.load()
    assert not isinstance(helper, str), helper
    assert helper.wire.kind == native_invoke.NATIVE, helper.wire.fallback
    assert helper.wire.native is not None
    return helper.wire.native


class _Buf:
    """A job-like buffer (address and view over the same memory)."""

    def __init__(self, size: int = ARGS.size + native_invoke._OUT.size) -> None:
        self.buffer = ctypes.create_string_buffer(size)
        self.address = ctypes.addressof(self.buffer)
        self.view = memoryview(self.buffer).cast("B")


class _Code:
    address = 0x1234_5678


_BYTES_DATA = bytes.__basicsize__ - 1

utf8able = st.text(max_size=40)  # hypothesis leaves out lone surrogates, which .encode() refuses
optional = st.none() | utf8able
coords = st.none() | st.floats(allow_nan=False, allow_infinity=False)
requests = st.builds(
    abi.GuestRequest,
    method=utf8able,
    url=utf8able,
    headers=st.lists(st.tuples(utf8able, utf8able), max_size=12),
    body=st.binary(max_size=300),
    client_ip=utf8able,
    region=utf8able,
    node_id=utf8able,
    request_id=utf8able,
    geo=st.builds(abi.Geo, optional, optional, optional, coords, coords),
)


def _call(config: bytes = b"\0\0\0\0", ticks: int = 7, measure: bool = True) -> native_invoke.Call:
    return native_invoke.Call(_Code(), ticks, measure, config)  # type: ignore[arg-type]


@given(req=requests, ticks=st.integers(0, 2**64 - 1), measure=st.booleans())
def test_pack_writes_what_pythons_pack_writes(
    wire: ModuleType, req: abi.GuestRequest, ticks: int, measure: bool
) -> None:
    call = _call(native_invoke.pack_config({"k": "v"}), ticks, measure)
    ours, theirs = _Buf(), _Buf()
    blob_c = wire.pack(ours, call, req)
    blob_py = native_invoke.pack(theirs.view, call, req)
    assert blob_c == blob_py
    c_fields, py_fields = ARGS.unpack_from(ours.view), ARGS.unpack_from(theirs.view)
    # Each points into its own blob; the rest is the same, bit for bit.
    assert c_fields[_ARGS_BLOB] == id(blob_c) + _BYTES_DATA
    assert c_fields[_ARGS_CONFIG] == id(call.config) + _BYTES_DATA == py_fields[_ARGS_CONFIG]
    same = [i for i in range(len(c_fields)) if i != _ARGS_BLOB]
    assert [c_fields[i] for i in same] == [py_fields[i] for i in same]


def test_pack_refuses_bad_input_with_a_python_error(wire: ModuleType) -> None:
    good = abi.GuestRequest("GET", "http://h/", [("a", "1")], b"", "ip", "r", "n", "id")
    buf = _Buf()
    bad_method = abi.GuestRequest(b"GET", "u", [], b"", "ip", "r", "n", "id")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected str, not bytes"):
        wire.pack(buf, _call(), bad_method)
    with pytest.raises(TypeError, match=r"\(name, value\) tuple"):
        wire.pack(buf, _call(), abi.GuestRequest("GET", "u", [("a", "1", "2")], b"", "i", "r",
                                                 "n", "id"))  # type: ignore[list-item]  # fmt: skip
    with pytest.raises(TypeError, match="must be a sequence"):
        wire.pack(buf, _call(), abi.GuestRequest("GET", "u", 5, b"", "i", "r", "n", "id"))  # type: ignore[arg-type]
    with pytest.raises(UnicodeEncodeError):
        wire.pack(buf, _call(), abi.GuestRequest("G\ud800", "u", [], b"", "i", "r", "n", "id"))
    with pytest.raises(TypeError, match=r"call\.config must be bytes"):
        wire.pack(buf, _call(config="x"), good)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a Call"):
        wire.pack(buf, (1, 2), good)
    with pytest.raises(TypeError, match="takes 3 arguments"):
        wire.pack(buf, _call())
    with pytest.raises(AttributeError):
        wire.pack(object(), _call(), good)
    with pytest.raises(ValueError, match="job at address 0"):
        wire.pack(type("Z", (), {"address": 0})(), _call(), good)
    # And after all that, a good one still packs.
    assert wire.pack(buf, _call(), good) == native_invoke.pack(_Buf().view, _call(), good)


def _write_out(
    buf: _Buf,
    keep: list[object],
    stage: int = native_invoke.DONE,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"Hello",
    events: bytes = b"",
    raw_headers: bytes | None = None,
    n_headers: int | None = None,
) -> None:
    """Writes a struct edge_out as the helper would after ARGS (its buffers kept in `keep`)."""
    headers = [(b"content-type", b"text/plain")] if headers is None else headers
    raw = raw_headers
    if raw is None:
        raw = b"".join(struct.pack("<II", len(k), len(v)) + k + v for k, v in headers)
    bufs = [ctypes.create_string_buffer(b, len(b) or 1) for b in (raw, body, events)]
    keep += bufs
    at = [ctypes.addressof(b) for b in bufs]
    native_invoke._OUT.pack_into(
        buf.view, ARGS.size, stage, 0, 0, 0, 203, len(headers) if n_headers is None else n_headers,
        at[0], len(raw), at[1], len(body), 1_500, 700, 1, 2, 3, 4, at[2], len(events), 5,
    )  # fmt: skip


@given(
    stage=st.sampled_from([native_invoke.DONE, native_invoke.FAILED_POST_RETURN]),
    headers=st.lists(st.tuples(utf8able, utf8able), max_size=6),
    body=st.binary(max_size=64),
    events=st.binary(max_size=64),
)
def test_a_plain_answer_reads_as_pythons_reader_reads_it(
    wire: ModuleType, stage: int, headers: list[tuple[str, str]], body: bytes, events: bytes
) -> None:
    buf, keep = _Buf(), []  # type: ignore[var-annotated]
    _write_out(buf, keep, stage, [(k.encode(), v.encode()) for k, v in headers], body, events)
    ours = wire.outcome(buf, ARGS.size)
    assert ours == native_invoke.outcome_at(buf.view, ARGS.size)
    assert ours.response == abi.GuestResponse(203, headers, body)
    assert (ours.events, ours.dropped, ours.wall_ns) == (events, 5, (1, 2, 3, 4))


def _plain(out: native_invoke.Outcome) -> tuple[object, ...]:
    bad = out.bad_response  # exceptions compare by identity: by type and arguments here
    return (out.stage, out.response, None if bad is None else (type(bad), bad.args), out.events)


def test_everything_but_a_plain_answer_is_left_to_pythons_reader(wire: ModuleType) -> None:
    w = Wire(wire)
    for stage in (native_invoke.FAILED_INSTANTIATE, native_invoke.FAILED_CALL,
                  native_invoke.BAD_RESPONSE):  # fmt: skip
        buf, keep = _Buf(), []  # type: ignore[var-annotated]
        _write_out(buf, keep, stage)
        assert wire.outcome(buf, ARGS.size) is None
        assert _plain(w.outcome(buf, ARGS.size)) == _plain(
            native_invoke.outcome_at(buf.view, ARGS.size)
        )
    # A header that is not UTF-8: Python's reader turns it into a bad response.
    buf, keep = _Buf(), []
    _write_out(buf, keep, headers=[(b"x", b"\xff")])
    assert wire.outcome(buf, ARGS.size) is None
    out = w.outcome(buf, ARGS.size)
    assert out.stage == native_invoke.BAD_RESPONSE and out.bad_response is not None
    assert "not UTF-8" in str(out.bad_response)
    # Header sizes running past their buffer, or more headers than could fit: declined, not read.
    for raw, n in ((struct.pack("<II", 100, 100) + b"ab", 1), (b"", 3)):
        buf, keep = _Buf(), []
        _write_out(buf, keep, raw_headers=raw, n_headers=n)
        assert wire.outcome(buf, ARGS.size) is None
    # The helper out of memory: Python's reader raises the node's error.
    buf, keep = _Buf(), []
    _write_out(buf, keep, native_invoke.OUT_OF_MEMORY)
    with pytest.raises(NodeOutOfMemory):
        w.outcome(buf, ARGS.size)


def test_without_the_extension_python_packs_and_reads_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(native_build.sysconfig, "get_paths", lambda: {"include": "/nonexistent"})
    with pytest.raises(ToolchainMissing, match="Python's C headers are not in /nonexistent"):
        native_build.library_path("wire")
    why = "ToolchainMissing: Python's C headers are not in /nonexistent"
    monkeypatch.setattr(native_build, "load_extension", lambda _: why)
    wire = native_invoke.load_wire()
    assert (wire.kind, wire.fallback) == ("python", f"native wire unavailable ({why})")
    req = abi.GuestRequest("GET", "http://h/", [("a", "1")], b"b", "ip", "r", "n", "id")
    buf = _Buf()
    assert wire.pack(buf, _call(), req) == native_invoke.pack(_Buf().view, _call(), req)
    keep: list[object] = []
    _write_out(buf, keep)
    assert wire.outcome(buf, ARGS.size) == native_invoke.outcome_at(buf.view, ARGS.size)


def test_a_wire_whose_layout_differs_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    class Moved:
        @staticmethod
        def layout() -> tuple[int, int]:
            return (ARGS.size + 8, native_invoke._OUT.size)

    monkeypatch.setattr(native_build, "load_extension", lambda _: Moved)
    wire = native_invoke.load_wire()
    assert wire.kind == "python" and "layout" in wire.fallback


def test_an_engine_says_which_wire_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    with SandboxEngine(EngineSettings(pool_total_instances=4)) as engine:
        assert engine.wire_summary == "native"
        assert not any(n.startswith("wire") for n in engine.notes)
        helper = engine.invoke_helper
        assert helper is not None
        monkeypatch.setattr(helper, "wire", Wire(None, "native wire unavailable (why)"))
        assert engine.wire_summary == "python (native wire unavailable (why))"
        assert "wire: python, native wire unavailable (why)" in engine.notes
    with SandboxEngine(EngineSettings(pool_total_instances=4, invoke="python")) as engine:
        assert engine.wire_summary == "off"


def test_install_builds_the_other_helpers_and_names_the_one_that_failed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(native_build.sysconfig, "get_paths", lambda: {"include": "/nonexistent"})
    with pytest.raises(SystemExit) as stopped:
        native_build.main()
    assert stopped.value.code == 1
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.splitlines()] == ["ticker", "invoke"]
    assert err == "wire: not built: Python's C headers are not in /nonexistent (Debian: apt " \
        "install python3-dev)\n"


def test_the_pool_calls_refuse_null_addresses_and_bad_arguments(wire: ModuleType) -> None:
    with pytest.raises(ValueError, match="submit: a null address"):
        wire.submit(0, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="submit: a null address"):
        wire.submit(1, 1, 1, 1, 0)  # an enter function without its ticker
    with pytest.raises(ValueError, match="take: a null address"):
        wire.take(1, 0, 64, 1)
    with pytest.raises(ValueError, match="done: a null address"):
        wire.done(1, 0, 0, 0, 1, 1024)
    with pytest.raises(TypeError, match=r"take\(pool, out, cap, take_fn\)"):
        wire.take(1, 1, 64)
    with pytest.raises(TypeError):
        wire.submit(1, 1, 1, 0, "0")
    with pytest.raises(OverflowError):
        wire.done(-1, 0, 0, 1, 1, 1024)


def test_another_interpreter_abi_gets_its_own_build(monkeypatch: pytest.MonkeyPatch) -> None:
    wire, ticker = native_build.library_path("wire"), native_build.library_path("ticker")
    monkeypatch.setattr(native_build.sysconfig, "get_config_var", lambda _: "cpython-313-x86_64")
    assert native_build.library_path("wire") != wire
    assert native_build.library_path("ticker") == ticker  # a plain library is ABI-free


def _each_allocation_failing(
    testcapi: ModuleType, call: Callable[[int], object], expected: Callable[[int], object]
) -> int:
    """Calls `call(n)` with its n-th memory allocation failing (CPython's test hooks, on every
    allocator domain), for n = 0, 1, ... until a call gets through: each gives `expected(n)` or
    MemoryError, never a crash, nor another answer (such as a failure taken for bad input).
    Returns how many raised."""
    raised = 0
    for n in range(1000):
        testcapi.set_nomemory(n, n + 1)
        try:
            got = call(n)
        except MemoryError:
            raised += 1
            continue
        finally:
            testcapi.remove_mem_hooks()
        assert got == expected(n), n
        return raised
    raise AssertionError("no call got through")


def test_out_of_memory_in_pack_or_outcome_is_a_memory_error(wire: ModuleType) -> None:
    testcapi = pytest.importorskip("_testcapi")  # CPython's own test module, in standard builds
    gc.disable()  # a collection inside a starved call would move which allocation fails
    try:
        # Everything made beforehand, a fresh request a try: the UTF-8 form of a non-ASCII str
        # is allocated on its first use.
        headers = [[(f"x-é{n}", f"ü{n}"), ("a", "b")] for n in range(100)]
        reqs = [abi.GuestRequest("GÉT", f"http://h/é{n}", h, b"b", "ip", "r", "n", "id")
                for n, h in enumerate(headers)]  # fmt: skip
        packed = [native_invoke.pack(_Buf().view, _call(), r) for r in reqs]
        bufs, call = [_Buf() for _ in reqs], _call()
        raised = _each_allocation_failing(
            testcapi, lambda n: wire.pack(bufs[n], call, reqs[n]), lambda n: packed[n]
        )
        assert raised >= 3  # the UTF-8 forms, the pieces' array, the blob

        buf, keep = _Buf(), []  # type: ignore[var-annotated]
        _write_out(buf, keep, headers=[(b"x-\xc3\xa9", b"\xc3\xbc"), (b"b", b"c")])
        reference = native_invoke.outcome_at(buf.view, ARGS.size)
        raised = _each_allocation_failing(
            testcapi, lambda _: wire.outcome(buf, ARGS.size), lambda _: reference
        )
        assert raised >= 5  # the headers' list, strings and tuples, the body, the answer
    finally:
        gc.enable()


@pytest.mark.parametrize("name", ["invoke", "wire"])
def test_a_big_endian_host_does_not_build_the_helpers_that_copy_the_blob_in_host_order(
    name: str, tmp_path: Path
) -> None:
    """The blob's sizes and the events' fields are copied in host byte order while Python's
    side writes and reads them as little-endian: on a big-endian host the helper must not
    build, so requests take the Python path. Preprocessed only, with the compiler's byte-order
    macro set as a big-endian target sets it (a real s390x target costs zig a minute of
    building its libc first)."""
    zig = Toolchain().zig_cc()
    include = sysconfig.get_paths()["include"]
    source = str(native_build.SOURCE_DIR / f"{name}.c")

    def preprocess(*defines: str) -> str:
        done = subprocess.run(
            [*zig, "-E", *defines, f"-I{include}", source, "-o", str(tmp_path / "out.i")],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        return done.stdout + done.stderr

    big = preprocess("-U__BYTE_ORDER__", "-D__BYTE_ORDER__=__ORDER_BIG_ENDIAN__")
    assert f'"{name}.c supports little-endian hosts only"' in big
    assert "little-endian" not in preprocess()
