"""What a component may import and must export: the edge:function@0.1 world, checked at load.

A component is rejected when it is loaded, never at request time, with an error that names the
offending import or export. Imports allowed besides our own interfaces are the WASI 0.2
interfaces that language runtimes import whether or not the function uses them (CPython and
SpiderMonkey need clocks, random, stdio, and link filesystem and sockets code); `host` grants
none of their capabilities (no preopened directories, no environment, no network, no outbound
HTTP, frozen wall clock) unless `edge.toml` says so.
"""

from __future__ import annotations

import re
from typing import Any

from wasmtime import Engine
from wasmtime import component as cm

from edge.errors import ComponentRejected

WORLD = "edge:function@0.1.0"
HANDLER_EXPORT = "edge:function/handler@0.1.0"
HANDLER_FUNC = "handle"

# Our interfaces: any 0.1.x of these links (the host provides the newest 0.1 version).
OWN_INTERFACES = ("types", "log", "config")
_OWN_RE = re.compile(r"^edge:function/(?P<iface>[a-z-]+)@0\.1\.\d+$")

# WASI 0.2 interfaces a toolchain may import. Outbound HTTP is satisfied by denying stubs.
WASI_INTERFACES = {
    "wasi:io": {"error", "poll", "streams"},
    "wasi:clocks": {"monotonic-clock", "wall-clock"},
    "wasi:random": {"random", "insecure", "insecure-seed"},
    "wasi:cli": {
        "environment",
        "exit",
        "stdin",
        "stdout",
        "stderr",
        "terminal-input",
        "terminal-output",
        "terminal-stdin",
        "terminal-stdout",
        "terminal-stderr",
    },
    "wasi:filesystem": {"types", "preopens"},
    "wasi:sockets": {
        "network",
        "instance-network",
        "udp",
        "udp-create-socket",
        "tcp",
        "tcp-create-socket",
        "ip-name-lookup",
    },
    "wasi:http": {"types", "outgoing-handler"},
}
_WASI_RE = re.compile(r"^(?P<pkg>wasi:[a-z-]+)/(?P<iface>[a-z-]+)@0\.2\.\d+$")

# The expected shape of `handle`, written the way `describe` prints types.
_STR = "string"
_OPT_STR = "option<string>"
_OPT_F64 = "option<f64>"
_HEADERS = "list<tuple<string,string>>"
_GEO = (
    f"record{{country:{_OPT_STR},continent:{_OPT_STR},city:{_OPT_STR},"
    f"latitude:{_OPT_F64},longitude:{_OPT_F64}}}"
)
_CONTEXT = f"record{{region:{_STR},node-id:{_STR},request-id:{_STR},geo:{_GEO}}}"
REQUEST_SHAPE = (
    f"record{{method:{_STR},url:{_STR},headers:{_HEADERS},body:string,client-ip:{_STR},"
    f"context:{_CONTEXT}}}"
)
RESPONSE_SHAPE = f"record{{status:u16,headers:{_HEADERS},body:string}}"


def describe(ty: Any) -> str:
    """A structural, comparable rendering of a component value type."""
    simple = {
        cm.String: "string",
        cm.U8: "u8",
        cm.U16: "u16",
        cm.U32: "u32",
        cm.U64: "u64",
        cm.S8: "s8",
        cm.S16: "s16",
        cm.S32: "s32",
        cm.S64: "s64",
        cm.F32: "f32",
        cm.F64: "f64",
        cm.Bool: "bool",
        cm.Char: "char",
    }
    for cls, name in simple.items():
        if isinstance(ty, cls):
            return name
    if isinstance(ty, cm.ListType):
        return f"list<{describe(ty.element)}>"
    if isinstance(ty, cm.OptionType):
        return f"option<{describe(ty.payload)}>"
    if isinstance(ty, cm.TupleType):
        return "tuple<" + ",".join(describe(t) for t in ty.elements) + ">"
    if isinstance(ty, cm.RecordType):
        return "record{" + ",".join(f"{n}:{describe(t)}" for n, t in ty.fields) + "}"
    return type(ty).__name__


def import_allowed(name: str) -> bool:
    own = _OWN_RE.match(name)
    if own:
        return own.group("iface") in OWN_INTERFACES
    wasi = _WASI_RE.match(name)
    if wasi:
        return wasi.group("iface") in WASI_INTERFACES.get(wasi.group("pkg"), set())
    return False


def check_component(engine: Engine, component: cm.Component) -> list[str]:
    """Raises ComponentRejected unless the component fits the world; returns its import names."""
    ctype = component.type
    imports = list(ctype.imports(engine))
    for name in imports:
        if not import_allowed(name):
            raise ComponentRejected(
                f"component imports `{name}`, which is outside the {WORLD} world; a function may "
                f"import edge:function/{{{','.join(OWN_INTERFACES)}}}@0.1.x and WASI 0.2 "
                "interfaces only"
            )
    exports = ctype.exports(engine)
    if HANDLER_EXPORT not in exports:
        found = ", ".join(sorted(exports)) or "nothing"
        raise ComponentRejected(
            f"component does not export `{HANDLER_EXPORT}` (it exports {found}); build it against "
            f"the `function` world of sdk/wit"
        )
    handler = exports[HANDLER_EXPORT].ty
    if not isinstance(handler, cm.ComponentInstanceType):
        raise ComponentRejected(f"export `{HANDLER_EXPORT}` is not an interface instance")
    funcs = handler.exports(engine)
    if HANDLER_FUNC not in funcs or not isinstance(funcs[HANDLER_FUNC].ty, cm.FuncType):
        raise ComponentRejected(f"export `{HANDLER_EXPORT}` has no function `{HANDLER_FUNC}`")
    fty = funcs[HANDLER_FUNC].ty
    params = [describe(t) for _, t in fty.params]
    result = describe(fty.result) if fty.result is not None else "nothing"
    if params != [REQUEST_SHAPE] or result != RESPONSE_SHAPE:
        raise ComponentRejected(
            f"export `{HANDLER_EXPORT}#{HANDLER_FUNC}` has the wrong shape: takes "
            f"({', '.join(params)}) and returns {result}; expected ({REQUEST_SHAPE}) -> "
            f"{RESPONSE_SHAPE}"
        )
    return imports
