"""Rewrites a component so that a function's clock waits end at once.

A WASI wait (wasi:io/poll on a pollable from wasi:clocks/monotonic-clock) blocks in the host,
where epoch interruption cannot reach it: a Python `time.sleep(3)` held its worker thread for
3 s past a 500 ms deadline, and the 504 came only then (measured: 3.01 s). A function has no I/O
to wait for (no network, no files), so a wait only spends time: every call of
`subscribe-duration` or `subscribe-instant` gets 0 as its argument, and the pollable is ready at
once (a duration of 0, or instant 0, which is always past). `time.sleep` returns at once; code
that loops until the monotonic clock passes a time spins instead, and its deadline ends it (504).
JavaScript timers run on the SDK's virtual time and never get here.

Only call sites change: `drop; i64.const 0` before each `call` or `return_call` of those imports;
no index moves. A module that takes one as a value (an export, an element, a `ref.func` in an
initializer) could call it past the rewrite: such a component is refused (ClockAddressTaken). A
module this decoder cannot read is kept as it is and reported. Sans-I/O.

The rewrite finds those imports by name; clockflow checks that the component gives the lowered
clock functions to core modules under no other name (a hand-made component could).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from edge.sandbox import clockflow
from edge.sandbox.clockflow import CLOCK_INTERFACE, SUBSCRIBE
from edge.sandbox.wasm_decode import (
    CALL,
    COMPONENT_PREAMBLE,
    MODULE_PREAMBLE,
    RETURN_CALL,
    Body,
    Section,
    Undecodable,
    code_bodies,
    const_expr_refs,
    encode_uleb,
    imports_of,
    read_name,
    read_uleb,
    rewrite_core_modules,
    sections_of,
    skip_leb,
    skip_table_type,
    skip_valtype,
    walk_body,
    with_payload,
)

# Part of the compile cache key: bump when the rewrite changes what it produces.
VERSION = 1
_ZERO_ARGUMENT = b"\x1a\x42\x00"  # drop; i64.const 0
_IMPORT, _TABLE, _GLOBAL, _EXPORT, _ELEMENT, _CODE = 2, 4, 6, 7, 9, 10
_FUNC = 0x00


class ClockAddressTaken(Exception):
    """A core module uses a clock subscription other than by calling it, or the component gives
    one to a module under another name."""


@dataclass
class Clamped:
    wasm: bytes  # the input itself when no module was rewritten
    sites: int = 0  # calls now given 0
    skipped: list[str] = field(default_factory=list)  # modules left as they were, and why


def clamp(wasm: bytes) -> Clamped:
    """The component (or core module) with its clock waits given 0. Raises ClockAddressTaken;
    otherwise never raises: bytes it cannot parse come back unchanged."""
    skipped: list[str] = []
    if wasm.startswith(COMPONENT_PREAMBLE):
        _check_flow(wasm, skipped)
    out = rewrite_core_modules(wasm, _module, skipped)
    return Clamped(out.wasm or wasm, out.sites, skipped)


def _check_flow(wasm: bytes, skipped: list[str]) -> None:
    try:
        clockflow.check(wasm)
    except clockflow.ClockFlowRefused as e:
        raise ClockAddressTaken(f"{e}: a function's clock waits must be plain calls") from None
    except Undecodable as e:
        skipped.append(f"the component's wiring (not followed: {e})")


def _module(data: bytes) -> tuple[bytes, int] | None:
    if not data.startswith(MODULE_PREAMBLE):
        raise Undecodable("not a core module of version 1", 0)
    sections = sections_of(data, 8)
    by_id = {s.id: s for s in sections}
    targets = _clock_imports(data, by_id.get(_IMPORT))
    if not targets:
        return None
    taken = _values_taken(data, by_id) & targets
    if taken:
        raise ClockAddressTaken(
            "a core module uses wasi:clocks/monotonic-clock's subscribe functions "
            f"(function {min(taken)}) as a value, not only by calling them: a function's "
            "clock waits must be plain calls"
        )
    code = by_id.get(_CODE)
    if code is None:
        return None
    new_code, sites = _code(data, code, targets)
    if not sites:
        return None
    parts = [data[:8]]
    for s in sections:
        parts.append(with_payload(s.id, new_code) if s is code else data[s.header : s.end])
    return b"".join(parts), sites


def _clock_imports(data: bytes, s: Section | None) -> frozenset[int]:
    funcs = [entry for entry in ([] if s is None else imports_of(data, s)) if entry.kind == _FUNC]
    return frozenset(
        index
        for index, entry in enumerate(funcs)
        if entry.module.startswith(CLOCK_INTERFACE) and entry.name in SUBSCRIBE
    )


def _values_taken(data: bytes, by_id: dict[int, Section]) -> set[int]:
    """The functions the module uses as values outside its code: exported, in elements, or in
    initializers. Only these can be `ref.func` in a body (validation requires it)."""
    taken: set[int] = set()
    if (s := by_id.get(_EXPORT)) is not None:
        count, pos = read_uleb(data, s.start)
        for _ in range(count):
            _, pos = read_name(data, pos)
            kind = data[pos]
            target, pos = read_uleb(data, pos + 1)
            if kind == _FUNC:
                taken.add(target)
    if (s := by_id.get(_GLOBAL)) is not None:
        count, pos = read_uleb(data, s.start)
        for _ in range(count):
            pos = skip_valtype(data, pos) + 1
            refs, pos = const_expr_refs(data, pos)
            taken.update(refs)
    if (s := by_id.get(_TABLE)) is not None:
        count, pos = read_uleb(data, s.start)
        for _ in range(count):
            if data[pos] == 0x40 and data[pos + 1] == 0x00:  # a table with an initializer
                refs, pos = const_expr_refs(data, skip_table_type(data, pos + 2))
                taken.update(refs)
            else:
                pos = skip_table_type(data, pos)
    if (s := by_id.get(_ELEMENT)) is not None:
        taken.update(_element_functions(data, s))
    return taken


def _element_functions(data: bytes, s: Section) -> set[int]:
    out: set[int] = set()
    count, pos = read_uleb(data, s.start)
    for _ in range(count):
        flags, pos = read_uleb(data, pos)
        if flags > 7:
            raise Undecodable(f"unknown element segment flags {flags}", pos)
        if flags & 0b011 == 0b010:  # active with a table index
            pos = skip_leb(data, pos)
        if not flags & 0b001:  # active: an offset
            pos = const_expr_refs(data, pos)[1]
        if flags & 0b011:  # an element kind (indices) or a reference type (expressions)
            pos = skip_valtype(data, pos) if flags & 0b100 else pos + 1
        items, pos = read_uleb(data, pos)
        for _ in range(items):
            if flags & 0b100:
                refs, pos = const_expr_refs(data, pos)
                out.update(refs)
            else:
                target, pos = read_uleb(data, pos)
                out.add(target)
    return out


def _call_pattern(targets: frozenset[int]) -> re.Pattern[bytes]:
    """Bytes a call of a target could be (its index also written with padded LEB bytes): only
    bodies holding one are decoded."""
    forms = []
    for target in targets:
        minimal = encode_uleb(target)
        padded = minimal[:-1] + bytes([minimal[-1] | 0x80])
        forms.append(re.escape(minimal) + b"|" + re.escape(padded) + b"\x80{0,8}\x00")
    opcodes = re.escape(bytes([CALL, RETURN_CALL]))
    return re.compile(b"[" + opcodes + b"](?:" + b"|".join(forms) + b")")


# Where the calls are in a code section, by its digest and the targets: every JavaScript
# function carries the same engine code (as Python functions the same libpython), so only the
# first one's bodies are decoded (~0.24 s for the JS engine); the rest cost a hash (~10 ms).
_Calls = list[tuple[Body, list[int]]]  # bodies calling a target, and where (section offsets)
_SITES: OrderedDict[tuple[bytes, frozenset[int]], _Calls] = OrderedDict()
_SITES_KEPT = 16
_SITES_LOCK = threading.Lock()


def _code(data: bytes, code: Section, targets: frozenset[int]) -> tuple[bytes, int]:
    """The code section's payload with the calls of `targets` given 0, and how many."""
    key = (hashlib.sha256(memoryview(data)[code.start : code.end]).digest(), targets)
    with _SITES_LOCK:
        found = _SITES.get(key)
        if found is not None:
            _SITES.move_to_end(key)
    if found is None:
        found = _find_calls(data, code, targets)
        with _SITES_LOCK:
            _SITES[key] = found
            while len(_SITES) > _SITES_KEPT:
                _SITES.popitem(last=False)
    parts: list[bytes] = []
    base = code.start
    cursor = 0
    for body, calls in found:
        pieces = []
        at = body.start
        for call in calls:
            pieces += [data[base + at : base + call], _ZERO_ARGUMENT]
            at = call
        new_body = b"".join([*pieces, data[base + at : base + body.end]])
        parts += [data[base + cursor : base + body.size_at], encode_uleb(len(new_body)), new_body]
        cursor = body.end
    parts.append(data[base + cursor : code.end])
    return b"".join(parts), sum(len(calls) for _, calls in found)


def _find_calls(data: bytes, code: Section, targets: frozenset[int]) -> _Calls:
    hits = [m.start() for m in _call_pattern(targets).finditer(data, code.start, code.end)]
    found = []
    base = code.start
    for body in code_bodies(data, code, hits):
        calls = walk_body(data, body.start, body.end, targets)[1] if body.hit else []
        if calls:
            moved = Body(body.size_at - base, body.start - base, body.end - base, True)
            found.append((moved, [call - base for call in calls]))
    return found
