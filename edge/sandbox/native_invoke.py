"""A fresh request in one native call (edge/sandbox/native/invoke.c): store, instantiation,
lowering, the call, lifting, post-return and the store's deletion.

The Python path (capi's calls, abi's lowering and lifting) makes a dozen ctypes calls and
writes and reads the value trees with `struct`: about half of a C hello's ~45 µs on the request
path (bench.sandbox's `invoke` rows). The helper does the same in one call. It serves functions
that import no WASI (a C function's: see LoadedFunction); the others' instantiation costs a
millisecond, next to which the marshalling is noise, and they need a WASI context per store.

The helper mirrors wasmtime's C value layout; `Helper` compares it with wasmtime-py's ctypes
declarations and refuses a mismatch (a wasmtime upgrade that moved a field), so the Python path
serves instead of the helper writing wrong values. So it does without zig, or with
`[sandbox] invoke = "python"`.
"""

from __future__ import annotations

import ctypes
import functools
import struct
import threading
import weakref
from collections.abc import Mapping
from ctypes import c_char_p, c_int64, c_size_t, c_uint64, c_void_p
from dataclasses import dataclass
from types import ModuleType
from typing import NamedTuple, Protocol

from wasmtime import _ffi as ffi

from edge.errors import NodeOutOfMemory
from edge.sandbox import abi, native_build
from edge.sandbox.capi import bind
from edge.sandbox.code import Code

NATIVE = "native"
PYTHON = "python"
INVOKES = (NATIVE, PYTHON)

# The C API functions the helper calls, in edge_invoke_init's order.
_FUNCTIONS = (
    "wasmtime_store_new",
    "wasmtime_store_context",
    "wasmtime_store_limiter",
    "wasmtime_context_set_epoch_deadline",
    "wasmtime_component_linker_instantiate",
    "wasmtime_component_instance_get_func",
    "wasmtime_component_func_call",
    "wasmtime_component_func_post_return",
    "wasmtime_component_val_delete",
    "wasmtime_store_delete",
    # For the host functions (log, config) and their linker:
    "wasmtime_context_get_data",
    "wasmtime_component_val_new",
    "wasm_byte_vec_new",
    "wasmtime_component_linker_new",
    "wasmtime_component_linker_root",
    "wasmtime_component_linker_instance_add_instance",
    "wasmtime_component_linker_instance_add_func",
    "wasmtime_component_linker_instance_delete",
    "wasmtime_component_linker_delete",
    "wasmtime_error_delete",
)

# Where a call ended (struct edge_out's stage).
DONE, FAILED_INSTANTIATE, FAILED_CALL, BAD_RESPONSE, FAILED_POST_RETURN, OUT_OF_MEMORY = range(6)
_SHAPE, _BODY_OVER_LIMIT, _BODY_CODE_POINT = 1, 2, 3  # what was wrong with a response

# struct edge_out: stage, problem, error, detail, status, n_headers, headers, headers_size,
# body, body_size, instantiate_ns, instantiate_cpu_ns, wall_ns[4], events, events_size,
# dropped.
_OUT = struct.Struct("<qqQQQQQQQQqq4qQQQ")
# struct edge_args: code, deadline ticks, measure_cpu, blob, n_headers, geo flags, latitude,
# longitude, config.
ARGS = struct.Struct("<QQQQQQddQ")
_HEADER = struct.Struct("<II")  # a lifted header's name and value sizes, before their bytes
_lengths: dict[int, struct.Struct] = {}


def _expected_layout() -> list[int]:
    """What wasmtime-py declares, in the order edge_invoke_layout reports it."""
    val, entry = ffi.wasmtime_component_val_t, ffi.wasmtime_component_valrecord_entry
    kinds = ("U16", "F64", "STRING", "LIST", "RECORD", "TUPLE", "OPTION")
    return [
        ctypes.sizeof(val), val.of.offset, ctypes.sizeof(entry), entry.val.offset,
        ctypes.sizeof(ffi.wasmtime_component_instance_t),
        ctypes.sizeof(ffi.wasmtime_component_func_t),
        *(getattr(ffi, f"WASMTIME_COMPONENT_{k}").value for k in kinds),
        len(_FUNCTIONS),
    ]  # fmt: skip


@dataclass(slots=True)
class Outcome:
    stage: int
    error: int  # a wasmtime_error_t * to take over (capi.error) when the stage failed
    response: abi.GuestResponse | None  # with DONE and FAILED_POST_RETURN
    bad_response: abi.AbiError | None  # with BAD_RESPONSE
    instantiate_s: float
    instantiate_cpu_s: float  # this thread's CPU time, when asked for; else 0
    wall_ns: tuple[int, int, int, int]  # instantiation's start and end, the call's
    events: bytes  # the host calls the call made, for host.replay
    dropped: int  # log lines over the per-request cap


class NativeCode:
    """A `struct edge_code` for one Code and one function's limits, with a linker whose host
    functions are the helper's (log and config, recorded for host.replay); holds the Code, so
    the pointers in it stay valid while this object lives."""

    __slots__ = ("__weakref__", "_buffer", "address", "code")

    def __init__(self, code: Code, linker: int, memory_limit_bytes: int, body_limit: int) -> None:
        self.code = code
        self._buffer = (c_uint64 * 6)(
            code.engine_ptr, linker, code.component_ptr, code.index_ptr, memory_limit_bytes,
            body_limit,
        )  # fmt: skip
        self.address = ctypes.addressof(self._buffer)


class Call(NamedTuple):
    """What a fresh request needs besides the request itself, on either of the helper's paths
    (Helper.fresh on this thread, NativePool.run on its workers)."""

    native: NativeCode
    ticks: int  # the epoch deadline
    measure_cpu: bool  # also measure instantiation's thread CPU time (see prepare)
    config: bytes  # what config.get reads (pack_config)


def pack_config(config: Mapping[str, str]) -> bytes:
    """What config.get reads, as the helper reads it: u32 count, then per entry u32 key size,
    u32 value size, key, value."""
    out = [struct.pack("<I", len(config))]
    for key, value in config.items():
        k, v = key.encode(), value.encode()
        out += [struct.pack("<II", len(k), len(v)), k, v]
    return b"".join(out)


class Buffer(Protocol):
    """Where a request's struct edge_args and then its struct edge_out are (a pool's job, or a
    thread's scratch): the same memory by address and as a view."""

    address: int
    view: memoryview


class Wire:
    """The loop's side of a native request: packing it (`pack`) and reading its outcome
    (`outcome_at`). `native` is the wire.c extension that does both in C where it could be built
    and loaded (`fallback` says why not): its reader declines what is not a plain answer, which
    Python's then reads and explains."""

    __slots__ = ("fallback", "native")

    def __init__(self, native: ModuleType | None, fallback: str = "") -> None:
        self.native = native
        self.fallback = fallback

    @property
    def kind(self) -> str:
        return NATIVE if self.native is not None else PYTHON

    def pack(self, job: Buffer, call: Call, req: abi.GuestRequest) -> bytes:
        if self.native is not None:
            blob: bytes = self.native.pack(job, call, req)
            return blob
        return pack(job.view, call, req)

    def outcome(self, job: Buffer, at: int) -> Outcome:
        if self.native is not None:
            out: Outcome | None = self.native.outcome(job, at)
            if out is not None:
                return out
        return outcome_at(job.view, at)


def load_wire() -> Wire:
    """wire.c's extension, built if needed; or Python's reader and packer, and why."""
    module = native_build.load_extension("wire")
    if isinstance(module, str):
        return Wire(None, f"native wire unavailable ({module})")
    if module.layout() != (ARGS.size, _OUT.size):
        return Wire(None, f"native wire's layout {module.layout()} is not {ARGS.size, _OUT.size}")
    module.configure(Outcome, abi.GuestResponse)
    return Wire(module)


class _Scratch(threading.local):
    """A thread's struct edge_args and edge_out, for calls on this thread."""

    def __init__(self) -> None:
        self.buffer = ctypes.create_string_buffer(ARGS.size + _OUT.size)
        self.address = ctypes.addressof(self.buffer)
        self.view = memoryview(self.buffer).cast("B")


# Where a bytes object's data starts, from its address (CPython's PyBytesObject layout).
_BYTES_DATA = bytes.__basicsize__ - 1
_probe = b"layout probe"
assert ctypes.string_at(id(_probe) + _BYTES_DATA, len(_probe)) == _probe


def pack(view: memoryview, call: Call, req: abi.GuestRequest) -> bytes:
    """Writes struct edge_args for `req` at the start of `view`; returns the blob it points
    into, which must stay alive until the helper has run (and so must `call.config`)."""
    geo = req.geo
    items = abi.request_strings(req, req.body)  # the body raw: the helper encodes it
    items += [part.encode() for pair in req.headers for part in pair]
    lengths = _lengths.get(len(items))
    if lengths is None:
        lengths = _lengths[len(items)] = struct.Struct(f"<{len(items)}I")
    blob = lengths.pack(*map(len, items)) + b"".join(items)
    flags = (
        (geo.country is not None)
        | (geo.continent is not None) << 1
        | (geo.city is not None) << 2
        | (geo.latitude is not None) << 3
        | (geo.longitude is not None) << 4
    )
    ARGS.pack_into(
        view, 0, call.native.address, call.ticks, call.measure_cpu, id(blob) + _BYTES_DATA,
        len(req.headers), flags, geo.latitude or 0.0, geo.longitude or 0.0,
        id(call.config) + _BYTES_DATA,
    )  # fmt: skip
    return blob


def outcome_at(view: memoryview, at: int) -> Outcome:
    """Reads the struct edge_out at `at` in `view` (copying what it points to)."""
    (stage, problem, error, detail, status, n_headers, headers_at, headers_size, body_at,
     body_size, instantiate_ns, cpu_ns, w0, w1, w2, w3, events_at, events_size,
     dropped) = _OUT.unpack_from(view, at)  # fmt: skip
    if stage == OUT_OF_MEMORY:
        raise NodeOutOfMemory("the native invoke helper could not allocate its buffers")
    response = bad = None
    if stage == BAD_RESPONSE:
        bad = _bad_response(problem, detail)
    elif stage in (DONE, FAILED_POST_RETURN):
        try:
            headers = _headers(ctypes.string_at(headers_at, headers_size), n_headers)
        except UnicodeDecodeError as e:
            stage, bad = BAD_RESPONSE, abi.AbiError(f"response header is not UTF-8: {e}")
        else:
            body = ctypes.string_at(body_at, body_size) if body_size else b""
            response = abi.GuestResponse(status, headers, body)
    events = ctypes.string_at(events_at, events_size) if events_size else b""
    return Outcome(
        stage, error, response, bad, instantiate_ns / 1e9, cpu_ns / 1e9, (w0, w1, w2, w3),
        events, dropped,
    )  # fmt: skip


class Helper:
    """The loaded helper. Raises ValueError when its layout is not wasmtime-py's."""

    def __init__(self, dll: ctypes.CDLL) -> None:
        layout = (c_int64 * len(_expected_layout()))()
        dll.edge_invoke_layout(layout)
        if list(layout) != _expected_layout():
            raise ValueError(
                f"its wasmtime value layout {list(layout)} is not this wasmtime-py's "
                f"{_expected_layout()}"
            )
        functions = (c_void_p * len(_FUNCTIONS))(
            *(ctypes.cast(ffi.dll[name], c_void_p).value for name in _FUNCTIONS)
        )
        dll.edge_invoke_init(functions)
        self.dll = dll
        self._fresh = bind(dll, "edge_invoke_fresh", None, [c_void_p, c_void_p])
        self._linker_new = bind(dll, "edge_linker_new", c_void_p, [c_void_p, c_char_p, c_size_t])
        self._linker_delete = bind(dll, "edge_linker_delete", None, [c_void_p])
        self._scratch = _Scratch()
        self.wire = load_wire()

    def code(self, code: Code, memory_limit_bytes: int, body_limit: int) -> NativeCode | None:
        """`code` as the helper runs it; None when the helper's linker cannot link it."""
        names = b"".join(name.encode() + b"\0" for name in code.imports)
        linker = self._linker_new(code.engine_ptr, names, len(names))
        if not linker:
            return None
        native = NativeCode(code, linker, memory_limit_bytes, body_limit)
        weakref.finalize(native, self._linker_delete, linker)
        return native

    def fresh(self, call: Call, req: abi.GuestRequest) -> Outcome:
        """Runs `req` in a fresh instance of `call.native`'s code, on this thread."""
        scratch = self._scratch
        blob = self.wire.pack(scratch, call, req)
        self._fresh(scratch.address, scratch.address + ARGS.size)
        del blob  # alive until here: the helper read it in place
        return self.wire.outcome(scratch, ARGS.size)


def _headers(raw: bytes, n: int) -> abi.Headers:
    out: abi.Headers = []
    at = 0
    for _ in range(n):
        name_size, value_size = _HEADER.unpack_from(raw, at)
        at += 8
        value_at = at + name_size
        out.append((raw[at:value_at].decode(), raw[value_at : value_at + value_size].decode()))
        at = value_at + value_size
    return out


def _bad_response(problem: int, detail: int) -> abi.AbiError:
    if problem == _BODY_OVER_LIMIT:
        return abi.ResponseBodyOverLimit(detail)
    if problem == _BODY_CODE_POINT:
        return abi.body_code_point_error(detail)
    return abi.AbiError("response: values do not match the response record's shape")


def load() -> Helper | str:
    """The helper, built if needed (once per process); or why it is not available."""
    dll = native_build.load_helper("invoke")
    if isinstance(dll, str):
        return dll
    return _helper(dll)


@functools.cache
def _helper(dll: ctypes.CDLL) -> Helper | str:
    try:
        return Helper(dll)
    except ValueError as e:
        return f"ValueError: {e}"
