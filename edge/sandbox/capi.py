"""The wasmtime C API calls on a request's path, bound once with plain pointer types.

wasmtime-py's wrappers build a Python object per store, instance and function (each with a
finalizer) and convert every pointer argument through its ctypes structure type: about a third
of a fresh C hello's time. A request needs none of that: a store here is an address that `Store`
deletes exactly once, and instances and functions live in buffers reused by the thread.
"""

from __future__ import annotations

import ctypes
from ctypes import c_bool, c_int64, c_size_t, c_uint64, c_void_p
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi


def bind(dll: ctypes.CDLL, name: str, restype: Any, argtypes: list[Any]) -> Any:
    """`dll`'s function `name` with the given prototype. A fresh function object (`dll[name]`,
    not the cached `dll.name`), so prototypes others set on the same library stay untouched."""
    func = dll[name]
    func.restype = restype
    func.argtypes = argtypes
    return func


def function_address(dll: ctypes.CDLL, name: str) -> int:
    """Where function `name` of `dll` is, for C code that calls it (no ctypes in between)."""
    value = ctypes.cast(dll[name], c_void_p).value
    assert value is not None
    return value


def _bind(name: str, restype: Any, argtypes: list[Any]) -> Any:
    return bind(ffi.dll, name, restype, argtypes)


_P = c_void_p
store_new = _bind("wasmtime_store_new", _P, [_P, _P, _P])
store_context = _bind("wasmtime_store_context", _P, [_P])
store_delete = _bind("wasmtime_store_delete", None, [_P])
store_limiter = _bind(
    "wasmtime_store_limiter", None, [_P, c_int64, c_int64, c_int64, c_int64, c_int64]
)
set_epoch_deadline = _bind("wasmtime_context_set_epoch_deadline", None, [_P, c_uint64])
set_wasi = _bind("wasmtime_context_set_wasi", _P, [_P, _P])
linker_instantiate = _bind("wasmtime_component_linker_instantiate", _P, [_P, _P, _P, _P])
instance_get_func = _bind("wasmtime_component_instance_get_func", c_bool, [_P, _P, _P, _P])
func_call = _bind("wasmtime_component_func_call", _P, [_P, _P, _P, c_size_t, _P, c_size_t])
func_post_return = _bind("wasmtime_component_func_post_return", _P, [_P, _P])

# An atomic add: bound as a Python-API function, which keeps the GIL, because releasing and
# retaking it costs the Python ticker thread (500 calls a second) more than the call itself.
# The native ticker (edge.sandbox.ticker) calls it by this address.
_increment_epoch_at = ctypes.cast(ffi.dll.wasmtime_engine_increment_epoch, c_void_p).value
assert _increment_epoch_at is not None
increment_epoch_address: int = _increment_epoch_at
engine_increment_epoch = ctypes.PYFUNCTYPE(None, c_void_p)(_increment_epoch_at)

_ErrorPtr = ctypes.POINTER(ffi.wasmtime_error_t)


def address(obj: Any) -> int:
    """The C address behind a wasmtime-py object (Engine, Linker, Component, ExportIndex)."""
    value = ctypes.cast(obj.ptr(), c_void_p).value
    assert value is not None
    return value


def error(ptr: int) -> wasmtime.WasmtimeError:
    """Takes ownership of a returned `wasmtime_error_t *`."""
    return wasmtime.WasmtimeError._from_ptr(ctypes.cast(ptr, _ErrorPtr))


def top_frame_name(e: wasmtime.WasmtimeError) -> str | None:
    """The name (from its module's name section) of the wasm function an error was raised in,
    if it was raised in wasm and the function has one."""
    frames = ffi.wasm_frame_vec_t(0, None)
    ffi.wasmtime_error_wasm_trace(e.ptr(), ctypes.byref(frames))
    try:
        if not frames.size:
            return None
        name = ffi.wasmtime_frame_func_name(frames.data[0])
        if not name or not name.contents.size:
            return None
        return ctypes.string_at(name.contents.data, name.contents.size).decode(errors="replace")
    finally:
        ffi.wasm_frame_vec_delete(ctypes.byref(frames))


class Store:
    """A store without a Python data slot or finalizer; `close` deletes it (once). `keep`
    holds what keeps `engine` open (a Code) until then: the store may outlive its request."""

    __slots__ = ("context", "keep", "ptr")

    def __init__(
        self, engine: int, memory_limit_bytes: int, deadline_ticks: int, keep: object = None
    ) -> None:
        self.keep = keep
        self.ptr: int | None = store_new(engine, None, None)
        self.context: int = store_context(self.ptr)
        store_limiter(self.ptr, memory_limit_bytes, -1, -1, -1, -1)
        set_epoch_deadline(self.context, deadline_ticks)

    def set_wasi(self, config: wasmtime.WasiConfig) -> None:
        err = set_wasi(self.context, ctypes.cast(config._consume(), c_void_p))
        if err:
            raise error(err)

    def close(self) -> None:
        ptr, self.ptr = self.ptr, None
        if ptr is not None:
            store_delete(ptr)
        self.keep = None

    def __del__(self) -> None:
        self.close()
