"""Lowering our request record into wasmtime's C values and lifting the response back, fast.

wasmtime-py's generic `Func.__call__` asks the C API for the function's type on every call and
converts `list<u8>` one byte per Python object: about 250 µs for a small request and seconds
for a 10 MiB body. The contract (sdk/wit/function.wit) is ours and fixed per version, so this
module writes the `wasmtime_component_val_t` tree directly:

- the tree lives in one Python-owned buffer written with precompiled `struct`s (the C API
  only borrows parameters), and the result is read back the same way;
- bodies are `string`s carrying bytes as ISO-8859-1 code points (see `type body` in the WIT):
  the C API converts a `list<u8>` one 32-byte val per byte, about 200 ns per byte through the
  call (a 1 MiB body cost 400 ms), where a string is one copy.

Ownership follows the C API: the caller owns the parameter vals (here: a reused buffer); the
callee-produced result val's contents are deleted here after lifting.
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


@dataclass(slots=True)
class GuestRequest:
    """The `request` record of edge:function/types@0.1.0, as the host builds it. Not frozen:
    a frozen dataclass's `__init__` costs five times as much, once per request."""

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
# wasmtime's allocator and nothing needs `val_delete`. The three records sit at fixed offsets,
# so one precompiled `struct` write fills all their vals (field names included, as constants),
# one more the header list, and one slice assignment all string bytes: a handful of C calls
# per request instead of several per field.

_ENTRY_VAL_OFFSET = ffi.wasmtime_component_valrecord_entry.val.offset
_REQUEST_FIELDS = [b"method", b"url", b"headers", b"body", b"client-ip", b"context"]
_CONTEXT_FIELDS = [b"region", b"node-id", b"request-id", b"geo"]
_GEO_FIELDS = [b"country", b"continent", b"city", b"latitude", b"longitude"]
_OPTIONAL_STRINGS = 3  # country, continent, city; then latitude and longitude (f64)

# An entry is a name (size, pointer) and a val: kind, 7 bytes padding, 24 bytes of payload.
_ENTRY_2 = "QQB7xQQ8x"  # a val with a (size, pointer) payload: string, list, record
_ENTRY_PTR = "QQB7xQ16x"  # a val with one pointer: option
_VAL_2 = "B7xQQ8x"
_VAL_F64 = "B7xd16x"
_ROOT = 0
_REQUEST_AT = VAL_SIZE
_CONTEXT_AT = _REQUEST_AT + len(_REQUEST_FIELDS) * ENTRY_SIZE
_GEO_AT = _CONTEXT_AT + len(_CONTEXT_FIELDS) * ENTRY_SIZE
_INNER_AT = _GEO_AT + len(_GEO_FIELDS) * ENTRY_SIZE  # the vals inside geo's options
_NAMES_AT = _INNER_AT + len(_GEO_FIELDS) * VAL_SIZE
_TREE = struct.Struct(
    "<"
    + _ENTRY_2 * (len(_REQUEST_FIELDS) + len(_CONTEXT_FIELDS))
    + _ENTRY_PTR * len(_GEO_FIELDS)
    + _VAL_2 * _OPTIONAL_STRINGS
    + _VAL_F64 * (len(_GEO_FIELDS) - _OPTIONAL_STRINGS)
)
assert _TREE.size == _NAMES_AT - _REQUEST_AT
# Argument positions in `_TREE`: 5 per string/list/record entry (name size, name, kind, size,
# pointer), 4 per option entry, then the options' inner vals (3 per string, 2 per f64).
_STRING_SLOTS = (3, 8, 18, 23, 33, 38, 43, 71, 74, 77)  # method, url, body, client-ip, region,
# node-id, request-id, country, continent, city
_HEADERS_SLOT = 13
_CONTEXT_SLOT = 28
_GEO_SLOT = 48
_OPTION_SLOTS = (53, 57, 61, 65, 69)
_LATITUDE_SLOT = 80
_ROOT_VAL = struct.Struct("<" + _VAL_2)
_HEADER_VALS = 3 * VAL_SIZE  # the tuple in the list, and its two strings
_header_structs: dict[int, struct.Struct] = {}


def _headers_struct(n: int) -> struct.Struct:
    # n tuples, then their 2n strings; cached per count (requests carry few distinct counts).
    found = _header_structs.get(n)
    if found is None:
        found = _header_structs[n] = struct.Struct("<" + _VAL_2 * (3 * n))
    return found


class _RequestArena:
    """One zeroed ctypes buffer holding a lowered request: the fixed part (records and field
    names) first, then header vals, then string bytes. One per worker thread, reused request
    after request, which is safe because the C API only borrows the parameter for the call."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.cbuf = ctypes.create_string_buffer(size)
        self.base = base = ctypes.addressof(self.cbuf)
        # Writes go through a memoryview: much cheaper than slicing the ctypes array.
        self.buf = memoryview(self.cbuf).cast("B")
        at = _NAMES_AT
        names: list[tuple[int, int]] = []
        for name in _REQUEST_FIELDS + _CONTEXT_FIELDS + _GEO_FIELDS:
            self.buf[at : at + len(name)] = name
            names.append((len(name), base + at))
            at += len(name)
        self.dynamic_at = (at + 7) & ~7
        _ROOT_VAL.pack_into(self.buf, _ROOT, KIND_RECORD, len(_REQUEST_FIELDS), base + _REQUEST_AT)
        # The `_TREE` arguments with everything but string sizes, pointers and geo set.
        entry_kinds = [KIND_STRING, KIND_STRING, KIND_LIST, KIND_STRING, KIND_STRING, KIND_RECORD]
        entry_kinds += [KIND_STRING, KIND_STRING, KIND_STRING, KIND_RECORD]
        template: list[int | float] = []
        for (name_size, name_at), kind in zip(names, entry_kinds, strict=False):
            template += (name_size, name_at, kind, 0, 0)
        template[_CONTEXT_SLOT : _CONTEXT_SLOT + 2] = (len(_CONTEXT_FIELDS), base + _CONTEXT_AT)
        template[_GEO_SLOT : _GEO_SLOT + 2] = (len(_GEO_FIELDS), base + _GEO_AT)
        for name_size, name_at in names[len(entry_kinds) :]:
            template += (name_size, name_at, KIND_OPTION, 0)
        template += (KIND_STRING, 0, 0) * _OPTIONAL_STRINGS
        template += (KIND_F64, 0.0) * (len(_GEO_FIELDS) - _OPTIONAL_STRINGS)
        self.template = template
        self.header_templates: dict[int, list[int]] = {}

    def lower(self, strings: list[bytes], headers: list[bytes], geo: Geo, total: int) -> int:
        """`strings`: as `_STRING_SLOTS` lists them, encoded (b"" for an absent option);
        `headers`: name, value, name, value, ..."""
        base = self.base
        n = len(headers) // 2
        data_at = self.dynamic_at + n * _HEADER_VALS
        self.buf[data_at : data_at + total] = b"".join(strings + headers)
        ptr = base + data_at
        args = self.template.copy()
        for slot, s in zip(_STRING_SLOTS, strings, strict=True):
            args[slot] = size = len(s)
            args[slot + 1] = ptr
            ptr += size
        args[_HEADERS_SLOT] = n
        args[_HEADERS_SLOT + 1] = base + self.dynamic_at
        inner = base + _INNER_AT
        if geo.country is not None:
            args[_OPTION_SLOTS[0]] = inner
        if geo.continent is not None:
            args[_OPTION_SLOTS[1]] = inner + VAL_SIZE
        if geo.city is not None:
            args[_OPTION_SLOTS[2]] = inner + 2 * VAL_SIZE
        if geo.latitude is not None:
            args[_OPTION_SLOTS[3]] = inner + 3 * VAL_SIZE
            args[_LATITUDE_SLOT] = geo.latitude
        if geo.longitude is not None:
            args[_OPTION_SLOTS[4]] = inner + 4 * VAL_SIZE
            args[_LATITUDE_SLOT + 2] = geo.longitude
        _TREE.pack_into(self.buf, _REQUEST_AT, *args)
        if n:
            items = self._header_template(n).copy()
            slot = 3 * n + 1  # the size of the first string, after n tuples of 3 arguments
            for h in headers:
                items[slot] = size = len(h)
                items[slot + 1] = ptr
                ptr += size
                slot += 3
            _headers_struct(n).pack_into(self.buf, self.dynamic_at, *items)
        return base + _ROOT

    def _header_template(self, n: int) -> list[int]:
        found = self.header_templates.get(n)
        if found is None:
            pairs = self.base + self.dynamic_at + n * VAL_SIZE
            found = []
            for i in range(n):
                found += (KIND_TUPLE, 2, pairs + i * 2 * VAL_SIZE)
            found += (KIND_STRING, 0, 0) * (2 * n)
            self.header_templates[n] = found
        return found


_THREAD_ARENA_BYTES = 64 * 1024
_FIXED_BYTES = 1024  # the fixed part and alignment slack; checked below
_threads = threading.local()


def request_strings(req: GuestRequest, body: bytes) -> list[bytes]:
    """The request's strings as both request paths pass them: method, url, `body`, client-ip,
    region, node-id, request-id, country, continent, city (b"" for an absent option)."""
    geo = req.geo
    return [
        req.method.encode(),
        req.url.encode(),
        body,
        req.client_ip.encode(),
        req.region.encode(),
        req.node_id.encode(),
        req.request_id.encode(),
        b"" if geo.country is None else geo.country.encode(),
        b"" if geo.continent is None else geo.continent.encode(),
        b"" if geo.city is None else geo.city.encode(),
    ]


class LoweredRequest:
    """The `request` param, valid while this object lives; pass `pointer` to the call."""

    def __init__(self, req: GuestRequest) -> None:
        geo = req.geo
        strings = request_strings(req, encode_body(req.body))
        headers = [part.encode() for pair in req.headers for part in pair]
        total = sum(map(len, strings)) + sum(map(len, headers))
        need = _FIXED_BYTES + len(headers) // 2 * _HEADER_VALS + total
        if need <= _THREAD_ARENA_BYTES:
            arena: _RequestArena | None = getattr(_threads, "arena", None)
            if arena is None:
                arena = _threads.arena = _RequestArena(_THREAD_ARENA_BYTES)
        else:
            arena = _RequestArena(need)  # a large request gets its own, once
        self._arena = arena
        self.pointer = arena.lower(strings, headers, geo, total)


assert _RequestArena(_FIXED_BYTES).dynamic_at <= _FIXED_BYTES


# --- lifting ------------------------------------------------------------------------------------
#
# The result tree lives in wasmtime's memory. Each node is read with one `string_at` (a copy of
# a few dozen bytes) and unpacked with a precompiled `struct`, rather than through ctypes
# structure objects, which cost an allocation and a descriptor lookup per field.

_string_at = ctypes.string_at
_HEAD = struct.Struct("<B7xQQ")  # kind, then the (size, pointer) of a string, list or record
_FIELD = struct.Struct("<QQB7xQQ")  # a record entry: name (size, pointer), val kind, payload
_PAIR = struct.Struct("<B7xQQ8xB7xQQ")  # a tuple's two string vals
_RESPONSE_FIELDS = 3
_RESPONSE_NAME_SIZES = (len("status"), len("headers"), len("body"))


def encode_body(data: bytes) -> bytes:
    """Bytes → the UTF-8 of their ISO-8859-1 reading (each byte one code point)."""
    return data if data.isascii() else data.decode("latin-1").encode("utf-8")


def decode_body(encoded: bytes) -> bytes:
    if encoded.isascii():
        return encoded
    try:
        return encoded.decode("utf-8").encode("latin-1")
    except UnicodeEncodeError as e:
        raise body_code_point_error(ord(e.object[e.start])) from None


def body_code_point_error(code_point: int) -> AbiError:
    return AbiError(
        f"body holds code point U+{code_point:04X}; bodies carry bytes as U+0000..U+00FF "
        "(use the SDK's body helpers)"
    )


def _get_body(kind: int, size: int, data: int, limit: int) -> bytes:
    if kind != KIND_STRING:
        raise AbiError(f"body: unexpected value kind {kind}")
    # Decoding never grows the size, so the encoded size bounds the work before we do it.
    if size > 2 * limit:
        raise ResponseBodyOverLimit(size)
    body = decode_body(_string_at(data, size)) if size else b""
    if len(body) > limit:
        raise ResponseBodyOverLimit(len(body))
    return body


def _get_headers(kind: int, n: int, items: int) -> Headers:
    if kind != KIND_LIST:
        raise AbiError(f"headers: unexpected value kind {kind}")
    out: Headers = []
    raw = _string_at(items, n * VAL_SIZE) if n else b""
    for i in range(n):
        tkind, tsize, pair = _HEAD.unpack_from(raw, i * VAL_SIZE)
        if tkind != KIND_TUPLE or tsize != 2:
            raise AbiError(f"header: unexpected value kind {tkind}")
        nkind, nsize, name, vkind, vsize, value = _PAIR.unpack_from(_string_at(pair, 2 * VAL_SIZE))
        if nkind != KIND_STRING or vkind != KIND_STRING:
            raise AbiError("header: name and value must be strings")
        out.append(
            (
                _string_at(name, nsize).decode("utf-8") if nsize else "",
                _string_at(value, vsize).decode("utf-8") if vsize else "",
            )
        )
    return out


class ResponseBodyOverLimit(AbiError):
    def __init__(self, size: int) -> None:
        super().__init__(f"response body of at least {size} bytes")
        self.size = size


def lift_response(result: ffi.wasmtime_component_val_t, body_limit: int) -> GuestResponse:
    """Reads the `response` record and frees it (also when it is malformed)."""
    addr = ctypes.addressof(result)
    try:
        kind, n, entries = _HEAD.unpack(_string_at(addr, 24))
        if kind != KIND_RECORD:
            raise AbiError(f"response: unexpected value kind {kind}")
        # Load checked the export's type (contract.RESPONSE_SHAPE), and wasmtime builds the
        # record in type order: status, headers, body. The name sizes confirm it cheaply.
        if n != _RESPONSE_FIELDS:
            raise AbiError(f"response record has {n} fields, not {_RESPONSE_FIELDS}")
        raw = _string_at(entries, n * ENTRY_SIZE)
        sname, _, skind, status, _ = _FIELD.unpack_from(raw, 0)
        hname, _, hkind, hcount, hitems = _FIELD.unpack_from(raw, ENTRY_SIZE)
        bname, _, bkind, bsize, bdata = _FIELD.unpack_from(raw, 2 * ENTRY_SIZE)
        if (sname, hname, bname) != _RESPONSE_NAME_SIZES:
            raise AbiError("response record fields are not status, headers, body")
        if skind != KIND_U16:
            raise AbiError(f"status: unexpected value kind {skind}")
        try:
            headers = _get_headers(hkind, hcount, hitems)
        except UnicodeDecodeError as e:
            raise AbiError(f"response header is not UTF-8: {e}") from None
        # Only the u16's two bytes of the payload are defined.
        return GuestResponse(status & 0xFFFF, headers, _get_body(bkind, bsize, bdata, body_limit))
    finally:
        _val_delete(addr)
