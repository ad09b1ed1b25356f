"""Just enough WebAssembly binary decoding for the rewrites before a compile (growcheck,
waitclamp): sections, imports and function bodies of the core modules in a component, and
`memory.grow` or calls of given functions in a body (sans-I/O).

LEB128 numbers, value types, and every instruction's immediates, so a body can be walked
instruction by instruction without mistaking an immediate byte for an opcode. Covered: MVP,
sign extension, saturating truncation, bulk memory, reference types, typed function references,
multi-memory, memory64, SIMD and relaxed SIMD, threads, tail calls, exceptions (current and
legacy), GC and wide arithmetic. Anything else raises Undecodable, so a caller leaves the code
alone rather than guessing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple


class Undecodable(Exception):
    """Bytes this decoder does not understand (malformed, or a proposal it does not know)."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} at byte {offset}")
        self.offset = offset


MEMORY_GROW = 0x40
CALL = 0x10
RETURN_CALL = 0x12
REF_FUNC = 0xD2
_END = 0x0B

_MAX_LEB_BYTES = 10  # a u64

MODULE_PREAMBLE = b"\0asm\x01\x00\x00\x00"
COMPONENT_PREAMBLE = b"\0asm\x0d\x00\x01\x00"
# Components inside components: deeper ones are not walked (Python's recursion limit is ~1,000,
# and a hostile upload can nest thousands in a few kilobytes).
MAX_NESTING = 100
_CORE_MODULE, _COMPONENT = 1, 4  # component section ids


class Section(NamedTuple):
    id: int
    header: int  # where its id byte is
    start: int  # where its payload starts
    end: int


def sections_of(data: bytes, pos: int) -> list[Section]:
    """The sections of a module or component whose first section is at `pos`."""
    out: list[Section] = []
    size_of = len(data)
    while pos < size_of:
        size, start = read_uleb(data, pos + 1)
        end = start + size
        if end > size_of:
            raise Undecodable("section runs past the end", pos)
        out.append(Section(data[pos], pos, start, end))
        pos = end
    return out


def with_payload(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + encode_uleb(len(payload)) + payload


ModuleRewrite = Callable[[bytes, int], "bytes | None"]


class Rewritten(NamedTuple):
    wasm: bytes | None  # None when no module changed or the bytes are not wasm
    modules: int  # core modules rewritten
    sites: int  # what the rewrites counted, summed


def rewrite_core_modules(
    wasm: bytes, rewrite: Callable[[bytes], tuple[bytes, int] | None], skipped: list[str]
) -> Rewritten:
    """A component's (or a lone core module's) modules each replaced by `rewrite(module)`'s
    bytes where it gives (bytes, sites) rather than None. A module `rewrite` raises Undecodable
    for is kept and the reason added to `skipped`; so is the whole input when its component
    framing cannot be read (nothing is counted then)."""
    counts = [0, 0]

    def one(module: bytes, index: int) -> bytes | None:
        try:
            done = rewrite(module)
        except Undecodable as e:
            skipped.append(f"core module {index}: {e}")
            return None
        except IndexError:
            skipped.append(f"core module {index}: truncated")
            return None
        if done is None:
            return None
        counts[0] += 1
        counts[1] += done[1]
        return done[0]

    out = None
    try:
        if wasm.startswith(COMPONENT_PREAMBLE):
            out = _map_component(wasm, one, [0], 0)
        elif wasm.startswith(MODULE_PREAMBLE):
            out = one(wasm, 0)
    except Undecodable as e:
        skipped.append(f"component not parsed: {e}")
        return Rewritten(None, 0, 0)
    return Rewritten(out, *counts) if out is not None else Rewritten(None, 0, 0)


class Body(NamedTuple):
    size_at: int  # where its size field is
    start: int
    end: int
    hit: bool  # one of the positions asked about lies in it


def code_bodies(data: bytes, code: Section, hits: list[int] | None) -> Iterator[Body]:
    """The function bodies of a code section; `hit` says whether one of `hits` (sorted
    positions, e.g. where bytes of an instruction of interest appear) lies in it: always,
    when `hits` is None."""
    count, pos = read_uleb(data, code.start)
    next_hit = 0
    for _ in range(count):
        size, body = read_uleb(data, pos)
        end = body + size
        if end > code.end:
            raise Undecodable("function body runs past the code section", pos)
        hit = True
        if hits is not None:
            while next_hit < len(hits) and hits[next_hit] < body:
                next_hit += 1
            hit = next_hit < len(hits) and hits[next_hit] < end
        yield Body(pos, body, end, hit)
        pos = end
    if pos != code.end:
        raise Undecodable("code section does not end at its size", pos)


class Import(NamedTuple):
    module: bytes
    name: bytes
    kind: int  # 0 function, 1 table, 2 memory, 3 global, 4 tag
    memory64: bool  # a 64-bit memory


def imports_of(data: bytes, s: Section) -> list[Import]:
    """The entries of a core module's import section."""
    out: list[Import] = []
    count, pos = read_uleb(data, s.start)
    for _ in range(count):
        module, pos = read_name(data, pos)
        name, pos = read_name(data, pos)
        kind = data[pos]
        pos += 1
        is64 = False
        if kind == 0x00:  # function: its type
            pos = skip_leb(data, pos)
        elif kind == 0x01:
            pos = skip_table_type(data, pos)
        elif kind == 0x02:
            is64, pos = memory_is_64(data, pos)
        elif kind == 0x03:  # global: value type, mutability
            pos = skip_valtype(data, pos) + 1
        elif kind == 0x04:  # tag: attribute, type
            pos = skip_leb(data, pos + 1)
        else:
            raise Undecodable(f"unknown import kind 0x{kind:02x}", pos - 1)
        out.append(Import(module, name, kind, is64))
    if pos != s.end:
        raise Undecodable("import section does not end at its size", pos)
    return out


def _map_component(
    data: bytes, rewrite: ModuleRewrite, counter: list[int], depth: int
) -> bytes | None:
    """The component with each core module (nested components' too) replaced by
    `rewrite(module, index)` where that is not None; `counter` numbers them in binary order.
    None when no module changed. Only sizes change: no index of the component moves."""
    if depth > MAX_NESTING:
        raise Undecodable(f"components nested more than {MAX_NESTING} deep", 0)
    parts = [data[:8]]
    changed = False
    for s in sections_of(data, 8):
        new: bytes | None = None
        if s.id == _CORE_MODULE:
            new = rewrite(data[s.start : s.end], counter[0])
            counter[0] += 1
        elif s.id == _COMPONENT:
            new = _map_component(data[s.start : s.end], rewrite, counter, depth + 1)
        if new is None:
            parts.append(data[s.header : s.end])
        else:
            parts.append(with_payload(s.id, new))
            changed = True
    return b"".join(parts) if changed else None


def read_uleb(data: bytes, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 number at `pos`: (value, position after it)."""
    result = shift = 0
    start = pos
    try:
        while True:
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result, pos
            shift += 7
            if pos - start >= _MAX_LEB_BYTES:
                raise Undecodable("LEB128 number too long", start)
    except IndexError:
        raise Undecodable("truncated LEB128 number", start) from None


def encode_uleb(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"unsigned LEB128 of a negative number: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def skip_leb(data: bytes, pos: int) -> int:
    start = pos
    try:
        while data[pos] & 0x80:
            pos += 1
            if pos - start >= _MAX_LEB_BYTES:
                raise Undecodable("LEB128 number too long", start)
    except IndexError:
        raise Undecodable("truncated LEB128 number", start) from None
    return pos + 1


def read_name(data: bytes, pos: int) -> tuple[bytes, int]:
    size, pos = read_uleb(data, pos)
    end = pos + size
    if end > len(data):
        raise Undecodable("truncated name", pos)
    return data[pos:end], end


# Reference types with a heap type after them: (ref null ht), (ref ht).
_REF_PREFIXES = (0x63, 0x64)


def skip_valtype(data: bytes, pos: int) -> int:
    """A value type (or block type): a one-byte code, a reference-type prefix and a heap type,
    or a type index (an s33)."""
    if data[pos] in _REF_PREFIXES:
        return skip_leb(data, pos + 1)
    return skip_leb(data, pos)


# Immediate kinds. Index immediates (labels, functions, types, heap types, lanes taken as LEBs)
# are all skipped the same way, so only their count matters.
_NONE, _LEB1, _LEB2, _BLOCK, _BR_TABLE, _MEMARG, _GROW = 0, 1, 2, 3, 4, 5, 6
_BYTES4, _BYTES8, _SELECT_T, _TRY_TABLE, _LEB4 = 7, 8, 9, 10, 11
_BYTES16, _BYTE1, _MEMARG_LANE = 12, 13, 14
_FB, _FC, _FD, _FE = 15, 16, 17, 18
_UNKNOWN = -1


def _table(size: int, entries: dict[tuple[int, int], int]) -> list[int]:
    """A lookup list from inclusive opcode ranges to immediate kinds."""
    table = [_UNKNOWN] * size
    for (first, last), kind in entries.items():
        for op in range(first, last + 1):
            table[op] = kind
    return table


_MAIN = _table(
    256,
    {
        (0x00, 0x01): _NONE,  # unreachable, nop
        (0x02, 0x04): _BLOCK,  # block, loop, if
        (0x05, 0x05): _NONE,  # else
        (0x06, 0x06): _BLOCK,  # try (legacy exceptions)
        (0x07, 0x09): _LEB1,  # catch (legacy), throw, rethrow (legacy)
        (0x0A, 0x0B): _NONE,  # throw_ref, end
        (0x0C, 0x0D): _LEB1,  # br, br_if
        (0x0E, 0x0E): _BR_TABLE,
        (0x0F, 0x0F): _NONE,  # return
        (0x10, 0x10): _LEB1,  # call
        (0x11, 0x11): _LEB2,  # call_indirect type table
        (0x12, 0x12): _LEB1,  # return_call
        (0x13, 0x13): _LEB2,  # return_call_indirect
        (0x14, 0x15): _LEB1,  # call_ref, return_call_ref
        (0x18, 0x18): _LEB1,  # delegate (legacy)
        (0x19, 0x19): _NONE,  # catch_all (legacy)
        (0x1A, 0x1B): _NONE,  # drop, select
        (0x1C, 0x1C): _SELECT_T,
        (0x1F, 0x1F): _TRY_TABLE,
        (0x20, 0x26): _LEB1,  # locals, globals, table.get/set
        (0x28, 0x3E): _MEMARG,  # loads and stores
        (0x3F, 0x3F): _LEB1,  # memory.size
        (0x40, 0x40): _GROW,
        (0x41, 0x42): _LEB1,  # i32.const, i64.const
        (0x43, 0x43): _BYTES4,
        (0x44, 0x44): _BYTES8,
        (0x45, 0xC4): _NONE,  # numeric, sign extension
        (0xD0, 0xD0): _LEB1,  # ref.null heaptype
        (0xD1, 0xD1): _NONE,  # ref.is_null
        (0xD2, 0xD2): _LEB1,  # ref.func
        (0xD3, 0xD4): _NONE,  # ref.eq, ref.as_non_null
        (0xD5, 0xD6): _LEB1,  # br_on_null, br_on_non_null
        (0xFB, 0xFB): _FB,
        (0xFC, 0xFC): _FC,
        (0xFD, 0xFD): _FD,
        (0xFE, 0xFE): _FE,
    },
)

_GC = _table(
    31,
    {
        (0, 1): _LEB1,  # struct.new(_default) type
        (2, 5): _LEB2,  # struct.get(_s/_u)/set type field
        (6, 7): _LEB1,  # array.new(_default) type
        (8, 10): _LEB2,  # array.new_fixed type n, array.new_data/elem type idx
        (11, 14): _LEB1,  # array.get(_s/_u)/set type
        (15, 15): _NONE,  # array.len
        (16, 16): _LEB1,  # array.fill type
        (17, 19): _LEB2,  # array.copy type type, array.init_data/elem type idx
        (20, 23): _LEB1,  # ref.test/ref.cast (null) heaptype
        (24, 25): _LEB4,  # br_on_cast(_fail) flags label ht ht (flags is one byte < 0x80)
        (26, 30): _NONE,  # any.convert_extern, extern.convert_any, ref.i31, i31.get_s/u
    },
)

_MISC = _table(
    23,
    {
        (0, 7): _NONE,  # saturating truncation
        (8, 8): _LEB2,  # memory.init data mem
        (9, 9): _LEB1,  # data.drop
        (10, 10): _LEB2,  # memory.copy mem mem
        (11, 11): _LEB1,  # memory.fill mem
        (12, 12): _LEB2,  # table.init elem table
        (13, 13): _LEB1,  # elem.drop
        (14, 14): _LEB2,  # table.copy
        (15, 17): _LEB1,  # table.grow, table.size, table.fill
        (19, 22): _NONE,  # wide arithmetic
    },
)

_SIMD = _table(
    0x114,
    {
        (0x00, 0x0B): _MEMARG,  # v128 loads, splat loads, v128.store
        (0x0C, 0x0D): _BYTES16,  # v128.const, i8x16.shuffle
        (0x0E, 0x14): _NONE,  # swizzle, splats
        (0x15, 0x22): _BYTE1,  # extract_lane / replace_lane
        (0x23, 0x53): _NONE,
        (0x54, 0x5B): _MEMARG_LANE,  # load/store lane
        (0x5C, 0x5D): _MEMARG,  # load32_zero, load64_zero
        (0x5E, 0x113): _NONE,  # the rest, relaxed SIMD included
    },
)

_ATOMIC = _table(
    0x4F,
    {
        (0x00, 0x02): _MEMARG,  # notify, wait32, wait64
        (0x03, 0x03): _BYTE1,  # atomic.fence 0x00
        (0x10, 0x4E): _MEMARG,  # atomic loads, stores, rmw, cmpxchg
    },
)

_PREFIXED = {_FB: _GC, _FC: _MISC, _FD: _SIMD, _FE: _ATOMIC}


def _skip_memarg(data: bytes, pos: int) -> int:
    flags, pos = read_uleb(data, pos)
    if flags & 0x40:  # multi-memory: a memory index follows
        pos = skip_leb(data, pos)
    return skip_leb(data, pos)  # offset (u64 for memory64)


def grow_sites(data: bytes, pos: int, end: int) -> list[tuple[int, int]]:
    """Every `memory.grow` in the function body `data[pos:end]` (locals and code): (position
    just after its memory index, memory index). Raises Undecodable."""
    return walk_body(data, pos, end, frozenset())[0]


def walk_body(
    data: bytes, pos: int, end: int, targets: frozenset[int]
) -> tuple[list[tuple[int, int]], list[int]]:
    """The function body's `memory.grow` sites (as grow_sites) and where each `call` or
    `return_call` of a function in `targets` starts (its opcode). Raises Undecodable."""
    try:
        return _walk(data, pos, end, targets)
    except IndexError:
        raise Undecodable("truncated function body", pos) from None


def _walk(
    data: bytes, pos: int, end: int, targets: frozenset[int]
) -> tuple[list[tuple[int, int]], list[int]]:
    groups, pos = read_uleb(data, pos)
    for _ in range(groups):
        pos = skip_leb(data, pos)
        pos = skip_valtype(data, pos)
    sites: list[tuple[int, int]] = []
    calls: list[int] = []
    main = _MAIN
    while pos < end:
        op = data[pos]
        kind = main[op]
        pos += 1
        if kind == _NONE:
            continue
        if kind == _LEB1:
            if targets and op in (CALL, RETURN_CALL):
                target, after = read_uleb(data, pos)
                if target in targets:
                    calls.append(pos - 1)
                pos = after
                continue
            while data[pos] & 0x80:
                pos += 1
            pos += 1
            continue
        pos = _immediates(data, pos, kind, op, sites)
    if pos != end:
        raise Undecodable("function body does not end at its size", pos)
    return sites, calls


def const_expr_refs(data: bytes, pos: int) -> tuple[list[int], int]:
    """A constant expression at `pos` (a global's or a table's initializer, an element): the
    functions it names with `ref.func`, and the position after its `end`."""
    refs: list[int] = []
    try:
        while True:
            op = data[pos]
            pos += 1
            if op == _END:
                return refs, pos
            if op == REF_FUNC:
                target, pos = read_uleb(data, pos)
                refs.append(target)
                continue
            kind = _MAIN[op]
            if kind == _NONE:
                continue
            if kind in (_BLOCK, _BR_TABLE, _GROW, _TRY_TABLE):
                raise Undecodable(f"instruction 0x{op:02x} in a constant expression", pos - 1)
            pos = _immediates(data, pos, kind, op, [])
    except IndexError:
        raise Undecodable("truncated constant expression", pos) from None


def _immediates(data: bytes, pos: int, kind: int, op: int, sites: list[tuple[int, int]]) -> int:
    if kind >= _FB:
        sub, pos = read_uleb(data, pos)
        table = _PREFIXED[kind]
        kind = table[sub] if sub < len(table) else _UNKNOWN
        if kind == _NONE:
            return pos
        if kind == _UNKNOWN:
            raise Undecodable(f"unknown instruction 0x{op:02x} {sub}", pos)
    return _skip_immediates(data, pos, kind, op, sites)


def _skip_immediates(
    data: bytes, pos: int, kind: int, op: int, sites: list[tuple[int, int]]
) -> int:
    if kind == _LEB1:
        return skip_leb(data, pos)
    if kind == _MEMARG:
        return _skip_memarg(data, pos)
    if kind == _LEB2:
        return skip_leb(data, skip_leb(data, pos))
    if kind == _BLOCK:
        return skip_valtype(data, pos)  # 0x40, a value type, or a type index (an s33)
    if kind == _GROW:
        memory, pos = read_uleb(data, pos)
        sites.append((pos, memory))
        return pos
    if kind == _BR_TABLE:
        count, pos = read_uleb(data, pos)
        for _ in range(count + 1):
            pos = skip_leb(data, pos)
        return pos
    if kind == _BYTES4:
        return pos + 4
    if kind == _BYTES8:
        return pos + 8
    if kind == _BYTES16:
        return pos + 16
    if kind == _BYTE1:
        return pos + 1
    if kind == _MEMARG_LANE:
        return _skip_memarg(data, pos) + 1
    if kind == _SELECT_T:
        count, pos = read_uleb(data, pos)
        for _ in range(count):
            pos = skip_valtype(data, pos)
        return pos
    if kind == _LEB4:
        for _ in range(4):
            pos = skip_leb(data, pos)
        return pos
    if kind == _TRY_TABLE:
        pos = skip_valtype(data, pos)
        count, pos = read_uleb(data, pos)
        for _ in range(count):
            catch = data[pos]
            if catch > 3:
                raise Undecodable(f"unknown catch clause {catch}", pos)
            pos = skip_leb(data, pos + 1)
            if catch < 2:  # catch and catch_ref name a tag before the label
                pos = skip_leb(data, pos)
        return pos
    raise Undecodable(f"unknown instruction 0x{op:02x}", pos - 1)


def memory_is_64(data: bytes, pos: int) -> tuple[bool, int]:
    """A memory type (limits) at `pos`: (whether it is 64-bit, position after it)."""
    flags, pos = read_uleb(data, pos)
    if flags & ~0x0F:
        raise Undecodable(f"unknown memory limits flags 0x{flags:x}", pos)
    pos = skip_leb(data, pos)  # minimum
    if flags & 0x01:
        pos = skip_leb(data, pos)  # maximum
    if flags & 0x08:
        pos = skip_leb(data, pos)  # custom page size
    return bool(flags & 0x04), pos


def skip_table_type(data: bytes, pos: int) -> int:
    pos = skip_valtype(data, pos)
    flags, pos = read_uleb(data, pos)
    if flags & ~0x07:
        raise Undecodable(f"unknown table limits flags 0x{flags:x}", pos)
    pos = skip_leb(data, pos)
    return skip_leb(data, pos) if flags & 0x01 else pos


def count_types(data: bytes, pos: int, end: int) -> int:
    """How many type indices a type section's payload defines (a rec group defines several)."""
    entries, pos = read_uleb(data, pos)
    total = 0
    for _ in range(entries):
        if data[pos] == 0x4E:  # rec
            members, pos = read_uleb(data, pos + 1)
            for _ in range(members):
                pos = _skip_subtype(data, pos)
            total += members
        else:
            pos = _skip_subtype(data, pos)
            total += 1
    if pos != end:
        raise Undecodable("type section does not end at its size", pos)
    return total


def _skip_subtype(data: bytes, pos: int) -> int:
    if data[pos] in (0x50, 0x4F):  # sub, sub final: supertypes then a composite type
        count, pos = read_uleb(data, pos + 1)
        for _ in range(count):
            pos = skip_leb(data, pos)
    form = data[pos]
    pos += 1
    if form == 0x60:  # func
        for _ in range(2):
            count, pos = read_uleb(data, pos)
            for _ in range(count):
                pos = skip_valtype(data, pos)
        return pos
    if form == 0x5F:  # struct
        count, pos = read_uleb(data, pos)
        for _ in range(count):
            pos = skip_valtype(data, pos) + 1  # storage type (packed types are one byte), mut
        return pos
    if form == 0x5E:  # array
        return skip_valtype(data, pos) + 1
    raise Undecodable(f"unknown composite type 0x{form:02x}", pos - 1)
