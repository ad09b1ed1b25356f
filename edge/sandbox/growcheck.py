"""Rewrites a component so that a refused `memory.grow` traps in a function the host can name.

wasmtime's C API refuses growth past a store's memory limit by returning -1 to the guest and
tells the host nothing, so a function that hits its limit looked like any other trap (or,
handling the failed malloc, like nothing at all). This gives it wasmtime's own
`trap_on_grow_failure` behaviour, which the C API does not expose: after every `memory.grow`
comes a call to a check function that passes the result through, or executes `unreachable` when
it is -1. The check functions carry a name (`CHECK_NAME`) in the module's name section, so a
trap whose top wasm frame has that name is a memory-limit kill (see edge.sandbox.function).

Only appended: a type, a function and its body per memory index type (32/64-bit), and the
names. No existing index moves, so nothing else in the module or the component changes; a
module without `memory.grow` is kept byte for byte. A module with code this decoder does not
know is kept as it is and reported: its limit hits stay plain traps. Sans-I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from edge.sandbox.wasm_decode import (
    CALL,
    MODULE_PREAMBLE,
    Section,
    Undecodable,
    code_bodies,
    count_types,
    encode_uleb,
    grow_sites,
    imports_of,
    memory_is_64,
    read_name,
    read_uleb,
    rewrite_core_modules,
    sections_of,
    with_payload,
)

# Part of the compile cache key: bump when the rewrite changes what it produces.
VERSION = 1
CHECK_NAME = "edge.memory_limit"
_CHECK_NAMES = {False: CHECK_NAME.encode(), True: (CHECK_NAME + "64").encode()}

_CUSTOM, _TYPE, _IMPORT, _FUNCTION, _MEMORY, _CODE = 0, 1, 2, 3, 5, 10
_FUNCTION_NAMES = 1  # name section subsection id

# (param iN) (result iN): local.get 0; iN.const -1; iN.eq; if; unreachable; end; local.get 0
_CHECK_TYPES = {False: b"\x60\x01\x7f\x01\x7f", True: b"\x60\x01\x7e\x01\x7e"}
_CHECK_BODIES = {
    False: b"\x00\x20\x00\x41\x7f\x46\x04\x40\x00\x0b\x20\x00\x0b",
    True: b"\x00\x20\x00\x42\x7f\x51\x04\x40\x00\x0b\x20\x00\x0b",
}
# memory.grow of memory 0 (also written with a padded LEB index): in a module with one memory,
# only bodies holding these bytes are decoded.
_GROW_BYTES = re.compile(b"\x40[\x00\x80]")


def is_check(function_name: str | None) -> bool:
    """Whether a wasm function of this name is one of the checks this module adds."""
    return function_name is not None and function_name.encode() in _CHECK_NAMES.values()


@dataclass
class Instrumented:
    wasm: bytes  # the input itself when no module was rewritten
    modules: int = 0  # core modules rewritten
    sites: int = 0  # memory.grow instructions now checked
    skipped: list[str] = field(default_factory=list)  # why modules were left as they were


def instrument(wasm: bytes) -> Instrumented:
    """The component (or core module) with checked `memory.grow`s. Never raises: bytes it
    cannot parse come back unchanged (compiling them reports what is wrong)."""
    skipped: list[str] = []
    out = rewrite_core_modules(wasm, _module, skipped)
    return Instrumented(out.wasm or wasm, out.modules, out.sites, skipped)


class _Layout:
    """What the rewrite needs to know about a core module's sections."""

    def __init__(self, data: bytes, sections: list[Section]) -> None:
        self.func_imports = 0
        self.memories: list[bool] = []  # per memory index: whether it is 64-bit
        self.types: Section | None = None
        self.functions: Section | None = None
        self.code: Section | None = None
        self.names: Section | None = None
        for s in sections:
            if s.id == _IMPORT:
                self._imports(data, s)
            elif s.id == _MEMORY:
                count, pos = read_uleb(data, s.start)
                for _ in range(count):
                    is64, pos = memory_is_64(data, pos)
                    self.memories.append(is64)
                if pos != s.end:
                    raise Undecodable("memory section does not end at its size", pos)
            elif s.id == _TYPE:
                self.types = s
            elif s.id == _FUNCTION:
                self.functions = s
            elif s.id == _CODE:
                self.code = s
            elif s.id == _CUSTOM and self.names is None:
                name, _ = read_name(data, s.start)
                if name == b"name":
                    self.names = s

    def _imports(self, data: bytes, s: Section) -> None:
        for entry in imports_of(data, s):
            if entry.kind == 0x00:
                self.func_imports += 1
            elif entry.kind == 0x02:
                self.memories.append(entry.memory64)


def _module(data: bytes) -> tuple[bytes, int] | None:
    """The rewritten module and how many sites it checks; None when it has no memory.grow."""
    if not data.startswith(MODULE_PREAMBLE):
        raise Undecodable("not a core module of version 1", 0)
    try:
        sections = sections_of(data, 8)
        layout = _Layout(data, sections)
        if not layout.memories or layout.code is None:
            return None
        edits = _grow_edits(data, layout.code, len(layout.memories) == 1)
        if not edits:
            return None
        return _rewrite(data, sections, layout, edits), sum(len(e.sites) for e in edits)
    except IndexError:
        raise Undecodable("truncated module", len(data)) from None


class _Edit(NamedTuple):
    """A function body with memory.grow in it."""

    size_at: int  # where its size field is
    body: int
    end: int
    sites: list[tuple[int, int]]  # see wasm_decode.grow_sites


def _grow_edits(data: bytes, code: Section, one_memory: bool) -> list[_Edit]:
    hits = None
    if one_memory:  # where the code could hold a memory.grow; only those bodies are decoded
        hits = [m.start() for m in _GROW_BYTES.finditer(data, code.start, code.end)]
        if not hits:
            return []
    edits: list[_Edit] = []
    for body in code_bodies(data, code, hits):
        if body.hit and (sites := grow_sites(data, body.start, body.end)):
            edits.append(_Edit(body.size_at, body.start, body.end, sites))
    return edits


def _rewrite(data: bytes, sections: list[Section], layout: _Layout, edits: list[_Edit]) -> bytes:
    if layout.types is None or layout.functions is None:
        raise Undecodable("module with code but no type or function section", 8)
    kinds = sorted(set(layout.memories))  # False (32-bit) first
    types = layout.types
    type_entries, type_rest = read_uleb(data, types.start)
    first_type = count_types(data, types.start, types.end)
    defined, func_rest = read_uleb(data, layout.functions.start)
    first_func = layout.func_imports + defined
    check_of = {is64: first_func + i for i, is64 in enumerate(kinds)}
    calls = [CALL.to_bytes(1, "little") + encode_uleb(check_of[is64]) for is64 in layout.memories]

    new_types = (
        encode_uleb(type_entries + len(kinds))
        + data[type_rest : types.end]
        + b"".join(_CHECK_TYPES[k] for k in kinds)
    )
    new_functions = (
        encode_uleb(defined + len(kinds))
        + data[func_rest : layout.functions.end]
        + b"".join(encode_uleb(first_type + i) for i in range(len(kinds)))
    )
    new_code = _code(data, layout, edits, calls, kinds)
    names = [(check_of[k], _CHECK_NAMES[k]) for k in kinds]
    replaced = {types.header: new_types, layout.functions.header: new_functions}
    assert layout.code is not None
    replaced[layout.code.header] = new_code
    if layout.names is not None:
        replaced[layout.names.header] = _with_function_names(data, layout.names, names)
    parts = [data[:8]]
    for s in sections:
        payload = replaced.get(s.header)
        parts.append(data[s.header : s.end] if payload is None else with_payload(s.id, payload))
    if layout.names is None:
        parts.append(with_payload(_CUSTOM, _name_section(names)))
    return b"".join(parts)


def _code(
    data: bytes, layout: _Layout, edits: list[_Edit], calls: list[bytes], kinds: list[bool]
) -> bytes:
    code = layout.code
    assert code is not None
    count, cursor = read_uleb(data, code.start)
    parts = [encode_uleb(count + len(kinds))]
    for size_at, body, end, sites in edits:
        parts.append(data[cursor:size_at])
        pieces = []
        at = body
        for after, memory in sites:
            if memory >= len(calls):
                raise Undecodable(f"memory.grow of memory {memory}, which does not exist", after)
            pieces.append(data[at:after])
            pieces.append(calls[memory])
            at = after
        pieces.append(data[at:end])
        new_body = b"".join(pieces)
        parts.append(encode_uleb(len(new_body)))
        parts.append(new_body)
        cursor = end
    parts.append(data[cursor : code.end])
    for k in kinds:
        parts.append(encode_uleb(len(_CHECK_BODIES[k])) + _CHECK_BODIES[k])
    return b"".join(parts)


def _name_map(names: list[tuple[int, bytes]]) -> bytes:
    return b"".join(encode_uleb(i) + encode_uleb(len(n)) + n for i, n in names)


def _name_section(names: list[tuple[int, bytes]]) -> bytes:
    sub = encode_uleb(len(names)) + _name_map(names)
    return b"\x04name" + bytes([_FUNCTION_NAMES]) + encode_uleb(len(sub)) + sub


def _with_function_names(data: bytes, s: Section, names: list[tuple[int, bytes]]) -> bytes:
    """The name section's payload with `names` added to its function names (the checks have
    the highest indices, so they go last and the map stays sorted)."""
    _, pos = read_name(data, s.start)
    parts = [data[s.start : pos]]
    added = False
    while pos < s.end:
        sub_id = data[pos]
        size, start = read_uleb(data, pos + 1)
        end = start + size
        if end > s.end:
            raise Undecodable("name subsection runs past its section", pos)
        if sub_id > _FUNCTION_NAMES and not added:
            parts.append(_name_section(names)[5:])  # a function-names subsection of its own
            added = True
        if sub_id == _FUNCTION_NAMES:
            count, rest = read_uleb(data, start)
            sub = encode_uleb(count + len(names)) + data[rest:end] + _name_map(names)
            parts.append(bytes([sub_id]) + encode_uleb(len(sub)) + sub)
            added = True
        else:
            parts.append(data[pos:end])
        pos = end
    if not added:
        parts.append(_name_section(names)[5:])
    return b"".join(parts)
