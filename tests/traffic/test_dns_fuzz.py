"""Fuzz invariant: handle() returns None or bytes that parse as a DNS message; it never raises."""

import dns.edns
import dns.message
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from .conftest import MakeStack

SEEDS = [
    dns.message.make_query("www.edge.test.", "A").to_wire(),
    dns.message.make_query(
        "www.edge.test.", "AAAA", use_edns=0, options=[dns.edns.ECSOption("81.2.69.0", 24)]
    ).to_wire(),
    dns.message.make_query("edge.test.", "SOA", use_edns=0).to_wire(),
]


def check(make_stack: MakeStack, wire: bytes) -> None:
    stack = make_stack()
    for transport in ("udp", "tcp"):
        out = stack.authority.handle(wire, "127.0.0.1", transport, 0.0)  # type: ignore[arg-type]
        if out is not None:
            dns.message.from_wire(out)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=600))
@example(b"")
@example(b"\x00" * 12)
@example(b"\x00\x00\x80\x00" + b"\x00" * 8)  # a response header
def test_random_bytes(make_stack: MakeStack, wire: bytes) -> None:
    check(make_stack, wire)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    wire = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        pos = draw(st.integers(0, max(0, len(wire) - 1)))
        if kind == "flip" and wire:
            wire[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and wire:
            wire[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            del wire[pos:]
        else:
            wire[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(wire)


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutated())
def test_mutated_queries(make_stack: MakeStack, wire: bytes) -> None:
    check(make_stack, wire)
