"""Lowering our request record into wasmtime's C values and lifting the response back, fast.

wasmtime-py's generic `Func.__call__` asks the C API for the function's type on every call and
converts `list<u8>` one byte per Python object: about 250 µs for a small request and seconds
for a 10 MiB body. The contract (sdk/wit/function.wit) is ours and fixed per version, so this
module writes the `wasmtime_component_val_t` tree directly:

- strings are copied with one C call each (our own prototype of `wasm_byte_vec_new` takes
  `bytes` as is, where wasmtime-py's needs a ctypes array);
- bodies are `string`s carrying bytes as ISO-8859-1 code points (see `type body` in the WIT):
  the C API converts a `list<u8>` one 32-byte val per byte, about 200 ns per byte through the
  call (a 1 MiB body cost 400 ms), where a string is one copy.

Ownership follows the C API: the caller owns the parameter vals and deletes them after the
call; the callee-produced result val is deleted here after lifting.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from wasmtime import _ffi as ffi

Val = ffi.wasmtime_component_val_t
VAL_SIZE = ctypes.sizeof(Val)
PAYLOAD_OFFSET = Val.of.offset
ENTRY_SIZE = ctypes.sizeof(ffi.wasmtime_component_valrecord_entry)

KIND_U8 = ffi.WASMTIME_COMPONENT_U8.value
KIND_U16 = ffi.WASMTIME_COMPONENT_U16.value
KIND_F64 = ffi.WASMTIME_COMPONENT_F64.value
KIND_STRING = ffi.WASMTIME_COMPONENT_STRING.value
KIND_LIST = ffi.WASMTIME_COMPONENT_LIST.value
KIND_RECORD = ffi.WASMTIME_COMPONENT_RECORD.value
KIND_TUPLE = ffi.WASMTIME_COMPONENT_TUPLE.value
KIND_OPTION = ffi.WASMTIME_COMPONENT_OPTION.value

_val_delete = ffi.dll["wasmtime_component_val_delete"]
_val_delete.argtypes = [ctypes.c_void_p]
_val_delete.restype = None

Headers = list[tuple[str, str]]


class AbiError(Exception):
    """The guest returned a value that does not match the contract."""


@dataclass(frozen=True)
class Geo:
    country: str | None = None
    continent: str | None = None
    city: str | None = None
    latitude: float | None = None
    longitude: float | None = None


@dataclass(frozen=True)
class GuestRequest:
    """The `request` record of edge:function/types@0.1.0, as the host builds it."""

    method: str
    url: str
    headers: Sequence[tuple[str, str]]
    body: bytes
    client_ip: str
    region: str
    node_id: str
    request_id: str
    geo: Geo = field(default_factory=Geo)


@dataclass
class GuestResponse:
    status: int
    headers: Headers
    body: bytes


# --- lowering -----------------------------------------------------------------------------------
#
# The parameter tree is written into one Python-owned buffer: the C API only borrows parameter
# vals (it copies them into its own representation for the call), so nothing here is handed to
# wasmtime's allocator and nothing needs `val_delete`. One buffer, one allocation, and plain
# `struct.pack_into` writes instead of dozens of ctypes calls.

_VAL_HEAD = struct.Struct("<B7xQQ")  # kind, then (size, pointer) for string/list/record/tuple
_VAL_PTR = struct.Struct("<B7xQ")  # kind, then one pointer (option)
_VAL_F64 = struct.Struct("<B7xd")
_VEC = struct.Struct("<QQ")  # wasm_byte_vec_t / record entry name: (size, pointer)


class _Arena:
    """A bump allocator over one zeroed ctypes buffer, addressed by absolute pointers."""

    def __init__(self, size: int) -> None:
        self.cbuf = ctypes.create_string_buffer(size)
        self.base = ctypes.addressof(self.cbuf)
        # Writes go through a memoryview: much cheaper than slicing the ctypes array.
        self.buf = memoryview(self.cbuf).cast("B")
        self.top = 0

    def alloc(self, size: int) -> int:
        """Returns the offset of `size` fresh bytes, 8-aligned."""
        offset = (self.top + 7) & ~7
        self.top = offset + size
        return offset

    def bytes_at(self, data: bytes) -> int:
        offset = self.alloc(len(data))
        self.buf[offset : offset + len(data)] = data
        return self.base + offset

    def string(self, offset: int, text: str) -> None:
        data = text.encode("utf-8")
        _VAL_HEAD.pack_into(self.buf, offset, KIND_STRING, len(data), self.bytes_at(data))

    def record(self, offset: int, names: Sequence[bytes]) -> list[int]:
        """Makes the val at `offset` a record; returns the offsets of its field vals."""
        entries = self.alloc(len(names) * ENTRY_SIZE)
        _VAL_HEAD.pack_into(self.buf, offset, KIND_RECORD, len(names), self.base + entries)
        out = []
        for i, name in enumerate(names):
            entry = entries + i * ENTRY_SIZE
            _VEC.pack_into(self.buf, entry, len(name), self.bytes_at(name))
            out.append(entry + _ENTRY_VAL_OFFSET)
        return out

    def option_string(self, offset: int, text: str | None) -> None:
        if text is None:
            _VAL_PTR.pack_into(self.buf, offset, KIND_OPTION, 0)
            return
        inner = self.alloc(VAL_SIZE)
        self.string(inner, text)
        _VAL_PTR.pack_into(self.buf, offset, KIND_OPTION, self.base + inner)

    def option_f64(self, offset: int, number: float | None) -> None:
        if number is None:
            _VAL_PTR.pack_into(self.buf, offset, KIND_OPTION, 0)
            return
        inner = self.alloc(VAL_SIZE)
        _VAL_F64.pack_into(self.buf, inner, KIND_F64, number)
        _VAL_PTR.pack_into(self.buf, offset, KIND_OPTION, self.base + inner)

    def headers(self, offset: int, headers: Sequence[tuple[str, str]]) -> None:
        items = self.alloc(len(headers) * VAL_SIZE)
        _VAL_HEAD.pack_into(self.buf, offset, KIND_LIST, len(headers), self.base + items)
        for i, (name, value) in enumerate(headers):
            pair = self.alloc(2 * VAL_SIZE)
            _VAL_HEAD.pack_into(self.buf, items + i * VAL_SIZE, KIND_TUPLE, 2, self.base + pair)
            self.string(pair, name)
            self.string(pair + VAL_SIZE, value)

    def body(self, offset: int, data: bytes) -> None:
        encoded = encode_body(data)
        _VAL_HEAD.pack_into(self.buf, offset, KIND_STRING, len(encoded), self.bytes_at(encoded))


_ENTRY_VAL_OFFSET = ffi.wasmtime_component_valrecord_entry.val.offset
_REQUEST_FIELDS = [b"method", b"url", b"headers", b"body", b"client-ip", b"context"]
_CONTEXT_FIELDS = [b"region", b"node-id", b"request-id", b"geo"]
_GEO_FIELDS = [b"country", b"continent", b"city", b"latitude", b"longitude"]
# Vals, record entries and names of the fixed part of the tree, plus alignment slack.
_FIXED_SIZE = 4096


def _arena_size(req: GuestRequest) -> int:
    strings = sum(len(s) for s in (req.method, req.url, req.client_ip, req.region))
    strings += len(req.node_id) + len(req.request_id)
    strings += sum(
        len(s) for s in (req.geo.country or "", req.geo.continent or "", req.geo.city or "")
    )
    headers = sum(len(n) + len(v) + 3 * VAL_SIZE + 16 for n, v in req.headers)
    # Each str may grow up to 4x when encoded as UTF-8, a body byte up to 2x.
    return _FIXED_SIZE + 4 * (strings + headers) + 2 * len(req.body)


class _RequestArena(_Arena):
    """An arena whose fixed part (the three records and their field names) is written once;
    each request rewrites only the values. One per worker thread, reused request after request,
    which is safe because the C API only borrows the parameter for the duration of the call."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size
        self.root = self.alloc(VAL_SIZE)
        self.request_fields = self.record(self.root, _REQUEST_FIELDS)
        self.context_fields = self.record(self.request_fields[5], _CONTEXT_FIELDS)
        self.geo_fields = self.record(self.context_fields[3], _GEO_FIELDS)
        self.fixed_top = self.top

    def lower(self, req: GuestRequest) -> int:
        self.top = self.fixed_top
        method, url, headers, body, client_ip, _ = self.request_fields
        self.string(method, req.method)
        self.string(url, req.url)
        self.headers(headers, req.headers)
        self.body(body, req.body)
        self.string(client_ip, req.client_ip)
        region, node_id, request_id, _ = self.context_fields
        self.string(region, req.region)
        self.string(node_id, req.node_id)
        self.string(request_id, req.request_id)
        country, continent, city, lat, lon = self.geo_fields
        self.option_string(country, req.geo.country)
        self.option_string(continent, req.geo.continent)
        self.option_string(city, req.geo.city)
        self.option_f64(lat, req.geo.latitude)
        self.option_f64(lon, req.geo.longitude)
        return self.base + self.root


_THREAD_ARENA_BYTES = 64 * 1024
_threads = threading.local()


class LoweredRequest:
    """The `request` param, valid while this object lives; pass `pointer` to the call."""

    def __init__(self, req: GuestRequest) -> None:
        need = _arena_size(req)
        if need <= _THREAD_ARENA_BYTES:
            arena: _RequestArena | None = getattr(_threads, "arena", None)
            if arena is None:
                arena = _threads.arena = _RequestArena(_THREAD_ARENA_BYTES)
        else:
            arena = _RequestArena(need + _FIXED_SIZE)  # a large request gets its own, once
        self._arena = arena
        self.pointer = arena.lower(req)


# --- lifting ------------------------------------------------------------------------------------


def _kind(addr: int) -> int:
    return ctypes.c_uint8.from_address(addr).value


def _expect(addr: int, kind: int, what: str) -> None:
    if _kind(addr) != kind:
        raise AbiError(f"{what}: unexpected value kind {_kind(addr)}")


def _get_string(addr: int, what: str) -> str:
    _expect(addr, KIND_STRING, what)
    vec = ffi.wasm_byte_vec_t.from_address(addr + PAYLOAD_OFFSET)
    return ctypes.string_at(vec.data, vec.size).decode("utf-8") if vec.size else ""


def _list(addr: int, what: str) -> tuple[int, int]:
    _expect(addr, KIND_LIST, what)
    lst = ffi.wasmtime_component_vallist.from_address(addr + PAYLOAD_OFFSET)
    return ctypes.cast(lst.data, ctypes.c_void_p).value or 0, lst.size


def encode_body(data: bytes) -> bytes:
    """Bytes → the UTF-8 of their ISO-8859-1 reading (each byte one code point)."""
    return data if data.isascii() else data.decode("latin-1").encode("utf-8")


def decode_body(encoded: bytes) -> bytes:
    if encoded.isascii():
        return encoded
    try:
        return encoded.decode("utf-8").encode("latin-1")
    except UnicodeEncodeError as e:
        raise AbiError(
            f"body holds code point U+{ord(e.object[e.start]):04X}; bodies carry bytes as "
            "U+0000..U+00FF (use the SDK's body helpers)"
        ) from None


def _get_body(addr: int, limit: int) -> bytes:
    _expect(addr, KIND_STRING, "body")
    vec = ffi.wasm_byte_vec_t.from_address(addr + PAYLOAD_OFFSET)
    # Decoding never grows the size, so the encoded size bounds the work before we do it.
    if vec.size > 2 * limit:
        raise ResponseBodyOverLimit(vec.size)
    body = decode_body(ctypes.string_at(vec.data, vec.size)) if vec.size else b""
    if len(body) > limit:
        raise ResponseBodyOverLimit(len(body))
    return body


def _get_headers(addr: int) -> Headers:
    base, n = _list(addr, "headers")
    out: Headers = []
    for i in range(n):
        item = base + i * VAL_SIZE
        _expect(item, KIND_TUPLE, "header")
        tup = ffi.wasmtime_component_valtuple.from_address(item + PAYLOAD_OFFSET)
        pair = ctypes.cast(tup.data, ctypes.c_void_p).value or 0
        out.append((_get_string(pair, "header name"), _get_string(pair + VAL_SIZE, "header value")))
    return out


class ResponseBodyOverLimit(AbiError):
    def __init__(self, size: int) -> None:
        super().__init__(f"response body of at least {size} bytes")
        self.size = size


def lift_response(result: ffi.wasmtime_component_val_t, body_limit: int) -> GuestResponse:
    """Reads the `response` record and frees it (also when it is malformed)."""
    addr = ctypes.addressof(result)
    try:
        _expect(addr, KIND_RECORD, "response")
        rec = ffi.wasmtime_component_valrecord.from_address(addr + PAYLOAD_OFFSET)
        fields: dict[str, int] = {}
        base = ctypes.cast(rec.data, ctypes.c_void_p).value or 0
        val_offset = ffi.wasmtime_component_valrecord_entry.val.offset
        for i in range(rec.size):
            entry = base + i * ENTRY_SIZE
            name = ffi.wasm_byte_vec_t.from_address(entry)
            fields[ctypes.string_at(name.data, name.size).decode()] = entry + val_offset
        try:
            status_addr = fields["status"]
            _expect(status_addr, KIND_U16, "status")
            status = ctypes.c_uint16.from_address(status_addr + PAYLOAD_OFFSET).value
            return GuestResponse(
                status=status,
                headers=_get_headers(fields["headers"]),
                body=_get_body(fields["body"], body_limit),
            )
        except KeyError as e:
            raise AbiError(f"response record lacks field {e}") from None
        except UnicodeDecodeError as e:
            raise AbiError(f"response header is not UTF-8: {e}") from None
    finally:
        _val_delete(addr)
