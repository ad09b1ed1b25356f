"""What the control plane checks of an uploaded component before it stores it (sans-I/O).

It never compiles: a node does that. But bytes that are not a WebAssembly component at all
(random data, a file cut short, a core module uploaded instead of its component) would be
signed and pushed to every node, which could then only answer 503 for the function. The binary
format's framing shows them for what they are in one pass over the top-level section headers,
without decoding any section.
"""

from __future__ import annotations

from edge.errors import BadRequest
from edge.sandbox.wasm_decode import COMPONENT_PREAMBLE, MODULE_PREAMBLE, Undecodable, read_uleb

# Top-level section ids of the component model binary format (custom .. export).
MAX_SECTION_ID = 11


class NotAComponent(BadRequest):
    """Uploaded bytes that no node could load as a component."""

    reason = "not_a_component"


def check_component_framing(data: bytes) -> None:
    """Raises NotAComponent naming what is wrong, or returns for well-framed component bytes."""
    if not data.startswith(COMPONENT_PREAMBLE[:4]):
        raise NotAComponent(f"not a WebAssembly binary: starts with {data[:8].hex() or 'nothing'}"
                            " instead of 0061736d ('\\0asm')")
    if data.startswith(MODULE_PREAMBLE):
        raise NotAComponent(
            "a core WebAssembly module, not a component: build it with `edge build` (or wrap it"
            " with `wasm-tools component new`)"
        )
    if not data.startswith(COMPONENT_PREAMBLE):
        raise NotAComponent(
            f"unsupported WebAssembly version/layer {data[4:8].hex()} (a component has 0d000100)"
        )
    pos = len(COMPONENT_PREAMBLE)
    while pos < len(data):
        section_id = data[pos]
        if section_id > MAX_SECTION_ID:
            raise NotAComponent(f"corrupt component: unknown section id {section_id} at byte {pos}")
        try:
            size, start = read_uleb(data, pos + 1)
        except Undecodable as e:
            raise NotAComponent(f"corrupt component: section header: {e}") from None
        if start + size > len(data):
            raise NotAComponent(
                f"corrupt or truncated component: the section at byte {pos} needs {size} bytes,"
                f" {len(data) - start} are left"
            )
        pos = start + size
