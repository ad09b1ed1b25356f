"""Where a component's clock subscriptions go: only into core module imports named after them.

waitclamp rewrites the calls of a core module's imports named `wasi:clocks/monotonic-clock@*`
`subscribe-duration` / `subscribe-instant`. A component decides which core function each core
import gets, so a hand-made one could give the lowered subscription to a module under another
name, where the rewrite would not see its calls. This follows the component's top-level index
spaces: a function exported by an imported `wasi:clocks/monotonic-clock` instance under one of
those names, lowered to a core function, may only be exported by a core instance under the same
name and handed to a module under an instance name of that interface. Anything else (another
name, a component instance carrying it to a nested component) raises ClockFlowRefused.
Sans-I/O; bytes it does not know raise Undecodable (the caller reports them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from edge.sandbox.wasm_decode import Undecodable, read_name, read_uleb, sections_of, skip_leb

T = TypeVar("T")

CLOCK_INTERFACE = b"wasi:clocks/monotonic-clock@"
SUBSCRIBE = frozenset({b"subscribe-duration", b"subscribe-instant"})

_CORE_INSTANCE, _INSTANCE, _ALIAS, _CANON, _IMPORT, _EXPORT = 2, 5, 6, 8, 10, 11
_CORE, _FUNC, _VALUE, _TYPE, _COMPONENT, _COMP_INSTANCE = 0, 1, 2, 3, 4, 5
_CORE_FUNC, _CORE_MODULE, _CORE_INST = 0x00, 0x11, 0x12


class ClockFlowRefused(Exception):
    """A clock subscription reaches a core module other than under its own name."""


class _Spaces:
    """The top-level index spaces this check follows, as lists of what each index holds."""

    def __init__(self) -> None:
        self.instances: list[bool] = []  # component instances: an imported clock interface?
        self.funcs: list[bool] = []  # component functions: a clock subscription?
        self.core_funcs: list[bool] = []  # core functions: a lowered clock subscription?
        self.core_instances: list[frozenset[bytes]] = []  # names exporting a lowered one


def check(component: bytes) -> int:
    """How many lowered clock subscriptions it followed, when each goes only into imports named
    after it. Raises ClockFlowRefused or Undecodable."""
    spaces = _Spaces()
    for s in sections_of(component, 8):
        read = _READERS.get(s.id)
        try:
            if read is not None:
                read(component, s.start, spaces)
        except IndexError:
            raise Undecodable("truncated component section", s.start) from None
    return sum(spaces.core_funcs)


def _extern_name(data: bytes, pos: int) -> tuple[bytes, int]:
    kind = data[pos]
    if kind not in (0x00, 0x01):
        raise Undecodable(f"unknown extern name kind 0x{kind:02x}", pos)
    name, pos = read_name(data, pos + 1)
    if kind == 0x01:  # a version suffix follows
        pos = read_name(data, pos)[1]
    return name, pos


def _skip_extern_desc(data: bytes, pos: int) -> tuple[int, int]:
    """(its sort, the position after it)."""
    sort = data[pos]
    pos += 1
    if sort == _CORE:
        if data[pos] != _CORE_MODULE:
            raise Undecodable(f"unknown core extern 0x{data[pos]:02x}", pos)
        return sort, skip_leb(data, pos + 1)
    if sort in (_FUNC, _COMPONENT, _COMP_INSTANCE):
        return sort, skip_leb(data, pos)
    if sort in (_VALUE, _TYPE):  # a bound: eq of an index, or a sub-resource / value type
        bound = data[pos]
        if bound == 0x00 or (sort == _VALUE and bound == 0x01):
            return sort, skip_leb(data, pos + 1)
        if bound == 0x01:
            return sort, pos + 1
    raise Undecodable(f"unknown extern description 0x{sort:02x}", pos - 1)


def _add(spaces: _Spaces, sort: int, core_sort: int | None, marked: bool) -> None:
    if sort == _FUNC:
        spaces.funcs.append(marked)
    elif sort == _COMP_INSTANCE:
        spaces.instances.append(marked)
    elif sort == _CORE and core_sort == _CORE_FUNC:
        spaces.core_funcs.append(marked)
    elif sort == _CORE and core_sort == _CORE_INST:
        spaces.core_instances.append(frozenset())


def _imports(data: bytes, pos: int, spaces: _Spaces) -> None:
    count, pos = read_uleb(data, pos)
    for _ in range(count):
        name, pos = _extern_name(data, pos)
        sort, pos = _skip_extern_desc(data, pos)
        if sort == _CORE:
            continue
        _add(spaces, sort, None, sort == _COMP_INSTANCE and name.startswith(CLOCK_INTERFACE))


def _sort(data: bytes, pos: int) -> tuple[int, int | None, int]:
    sort = data[pos]
    if sort == _CORE:
        return sort, data[pos + 1], pos + 2
    return sort, None, pos + 1


def _aliases(data: bytes, pos: int, spaces: _Spaces) -> None:
    count, pos = read_uleb(data, pos)
    for _ in range(count):
        sort, core_sort, pos = _sort(data, pos)
        target = data[pos]
        marked = False
        if target == 0x00:  # an export of a component instance
            instance, pos = read_uleb(data, pos + 1)
            name, pos = read_name(data, pos)
            marked = sort == _FUNC and _at(spaces.instances, instance) and name in SUBSCRIBE
        elif target == 0x01:  # an export of a core instance
            instance, pos = read_uleb(data, pos + 1)
            name, pos = read_name(data, pos)
            marked = core_sort == _CORE_FUNC and name in _at(spaces.core_instances, instance)
        elif target == 0x02:  # outer: types, modules and components only
            pos = skip_leb(data, skip_leb(data, pos + 1))
        else:
            raise Undecodable(f"unknown alias target 0x{target:02x}", pos)
        _add(spaces, sort, core_sort, marked)


def _canons(data: bytes, pos: int, spaces: _Spaces) -> None:
    count, pos = read_uleb(data, pos)
    for _ in range(count):
        op = data[pos]
        if op == 0x00 and data[pos + 1] == 0x00:  # lift: a component function
            pos = _skip_options(data, skip_leb(data, pos + 2))
            pos = skip_leb(data, pos)
            spaces.funcs.append(False)
        elif op == 0x01 and data[pos + 1] == 0x00:  # lower: a core function
            func, pos = read_uleb(data, pos + 2)
            pos = _skip_options(data, pos)
            spaces.core_funcs.append(_at(spaces.funcs, func))
        elif op in (0x02, 0x03, 0x04, 0x07):  # resource.new / drop / rep / drop async
            pos = skip_leb(data, pos + 1)
            spaces.core_funcs.append(False)
        else:
            raise Undecodable(f"unknown canonical function 0x{op:02x}", pos)


def _skip_options(data: bytes, pos: int) -> int:
    count, pos = read_uleb(data, pos)
    for _ in range(count):
        option = data[pos]
        pos += 1
        if option in (0x03, 0x04, 0x05, 0x07):  # memory, realloc, post-return, callback
            pos = skip_leb(data, pos)
        elif option not in (0x00, 0x01, 0x02, 0x06):  # encodings, async
            raise Undecodable(f"unknown canonical option 0x{option:02x}", pos - 1)
    return pos


def _core_instances(data: bytes, pos: int, spaces: _Spaces) -> None:
    count, pos = read_uleb(data, pos)
    for _ in range(count):
        form = data[pos]
        carried: set[bytes] = set()
        if form == 0x00:  # instantiate a module: named instances as its imports
            pos = skip_leb(data, pos + 1)
            args, pos = read_uleb(data, pos)
            for _ in range(args):
                name, pos = read_name(data, pos)
                if data[pos] != _CORE_INST:
                    raise Undecodable("a module's instantiation argument is no instance", pos)
                instance, pos = read_uleb(data, pos + 1)
                if _at(spaces.core_instances, instance) and not name.startswith(CLOCK_INTERFACE):
                    raise ClockFlowRefused(
                        f"a clock subscription is handed to a core module as {name!r}: only "
                        "the wasi:clocks/monotonic-clock interface may carry it"
                    )
        elif form == 0x01:  # from exports
            exports, pos = read_uleb(data, pos + 1)
            for _ in range(exports):
                name, pos = read_name(data, pos)
                core_sort = data[pos]
                index, pos = read_uleb(data, pos + 1)
                if core_sort == _CORE_FUNC and _at(spaces.core_funcs, index):
                    if name not in SUBSCRIBE:
                        raise ClockFlowRefused(
                            f"a clock subscription is exported to core modules as {name!r}"
                        )
                    carried.add(name)
        else:
            raise Undecodable(f"unknown core instance form 0x{form:02x}", pos)
        spaces.core_instances.append(frozenset(carried))


def _instances(data: bytes, pos: int, spaces: _Spaces) -> None:
    count, pos = read_uleb(data, pos)
    for _ in range(count):
        form = data[pos]
        if form == 0x00:  # instantiate a nested component
            pos = skip_leb(data, pos + 1)
            args, pos = read_uleb(data, pos)
            for _ in range(args):
                pos = read_name(data, pos)[1]
                pos = _refuse_carried(data, pos, spaces)
        elif form == 0x01:  # from exports
            exports, pos = read_uleb(data, pos + 1)
            for _ in range(exports):
                pos = _extern_name(data, pos)[1]
                pos = _refuse_carried(data, pos, spaces)
        else:
            raise Undecodable(f"unknown instance form 0x{form:02x}", pos)
        spaces.instances.append(False)


def _refuse_carried(data: bytes, pos: int, spaces: _Spaces) -> int:
    """A sortidx in a component instance: not the clock interface, nor one of its functions."""
    sort, _, pos = _sort(data, pos)
    index, pos = read_uleb(data, pos)
    if (sort == _FUNC and _at(spaces.funcs, index)) or (
        sort == _COMP_INSTANCE and _at(spaces.instances, index)
    ):
        raise ClockFlowRefused("the clock interface is carried into a component instance")
    return pos


def _exports(data: bytes, pos: int, spaces: _Spaces) -> None:
    count, pos = read_uleb(data, pos)
    for _ in range(count):
        pos = _extern_name(data, pos)[1]
        sort, core_sort, pos = _sort(data, pos)
        index, pos = read_uleb(data, pos)
        if data[pos] == 0x01:  # an ascribed type
            pos = _skip_extern_desc(data, pos + 1)[1]
        elif data[pos] != 0x00:
            raise Undecodable(f"unknown export type flag 0x{data[pos]:02x}", pos)
        else:
            pos += 1
        # An export is a new index for the same item: it stays what it was.
        marked = (sort == _FUNC and _at(spaces.funcs, index)) or (
            sort == _COMP_INSTANCE and _at(spaces.instances, index)
        )
        _add(spaces, sort, core_sort, marked)


def _at(space: list[T], index: int) -> T:
    if index >= len(space):
        raise Undecodable(f"index {index} before it is defined", 0)
    return space[index]


# The sections that add to the index spaces followed (the rest are skipped by their size).
_READERS: dict[int, Callable[[bytes, int, _Spaces], None]] = {
    _IMPORT: _imports,
    _ALIAS: _aliases,
    _CANON: _canons,
    _CORE_INSTANCE: _core_instances,
    _INSTANCE: _instances,
    _EXPORT: _exports,
}
