"""The code a loaded function runs: one compiled component, linked, in one Engine.

Immutable, and read once per request: a tier-up (see tiering) replaces a function's `Code` in
one assignment, so a request instantiates and calls one tier's code from start to end, and an
instance knows which code it was made from.
"""

from __future__ import annotations

from dataclasses import dataclass

import wasmtime
from wasmtime import component as cm

from edge.config.function import Capabilities
from edge.sandbox import capi, host
from edge.sandbox.contract import HANDLER_EXPORT, HANDLER_FUNC, check_component


@dataclass(frozen=True, eq=False)
class Code:
    tier: str  # the compiler that made it (see engine.COMPILERS)
    component: cm.Component
    linker: cm.Linker
    index: cm.ExportIndex
    imports: tuple[str, ...]
    needs_wasi: bool  # a component that imports no WASI (C, say) needs no WASI context
    # Addresses for the raw C calls of every request (see capi); the objects above keep them.
    engine_ptr: int
    linker_ptr: int
    component_ptr: int
    index_ptr: int
    # Last: a Code lets go of its fields in order, so the component and linker made in the
    # engine go before it (a baseline engine is closed once no Code of it is left).
    engine: wasmtime.Engine


def link(
    engine: wasmtime.Engine,
    component: cm.Component,
    caps: Capabilities,
    tier: str,
    log_write: host.HostFunc | None = None,
) -> Code:
    """Checks `component` against the world and links it. Raises ComponentRejected.
    `log_write`: see host.build_linker."""
    imports = check_component(engine, component)
    linker = host.build_linker(engine, component, imports, caps, log_write)
    handler = component.get_export_index(HANDLER_EXPORT)
    index = component.get_export_index(HANDLER_FUNC, handler)
    assert index is not None  # check_component verified it
    return Code(
        tier, component, linker, index, tuple(imports),
        any(name.startswith("wasi:") for name in imports),
        capi.address(engine), capi.address(linker), capi.address(component), capi.address(index),
        engine,
    )  # fmt: skip
