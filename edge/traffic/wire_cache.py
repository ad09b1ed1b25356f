"""Responses by query bytes, so a repeated query never meets dnspython.

Two tiers, both holding rendered responses without their 2-byte id, each with the metrics
outcome it counts as (`DnsStats.outcome`), so a hit counts like the first answer:
- exact: the query's bytes after the id, the resolver's address and the transport. Everything
  a response depends on (flags, question, EDNS payload size, the ECS option) is in those bytes.
- scoped, for ECS queries (RFC 7871): a response is valid for every client inside its scope
  network, so it is filed under (the query bytes up to the ECS address, transport, scope
  network). A query from another subnet in that network is answered by splicing its own
  address back in (responses echo it last: the ECS option is the only option, and OPT the last
  record). A lookup tries each prefix length of the client's address.

Only a query of the plain shape (one question, one OPT holding only a well-formed ECS option
with no address bits past its source prefix) uses the scoped tier; anything else goes through
the full parser and is at most cached exactly. Both tiers are dropped whole when the state's
fingerprint changes (health, drains, weights) or when they are full.
"""

from __future__ import annotations

import struct

ENTRIES = 100_000
ECS_CODE = 8
OPT_TYPE = 41
# QDCOUNT 1, ANCOUNT 0, NSCOUNT 0, ARCOUNT 1: a question and the OPT record.
PLAIN_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x01"
OPT_RR_BYTES = 11  # root name, type, class (payload), TTL (extended rcode, flags), rdlength
ECS_HEAD_BYTES = 8  # code, length, family, source prefix, scope prefix
FAMILY_BITS = {1: 32, 2: 128}


def parse_ecs(wire: bytes) -> tuple[int, int, int, int] | None:
    """(offset of the ECS address, address bits, source prefix, address as an int) for a
    query of the plain shape with a non-zero source prefix; None for anything else."""
    n = len(wire)
    if wire[4:12] != PLAIN_COUNTS:
        return None
    i = 12
    while True:
        if i >= n:
            return None
        label = wire[i]
        if label == 0:
            break
        if label > 63:  # a compression pointer in a question: not the plain shape
            return None
        i += label + 1
    i += 5  # the root label, QTYPE, QCLASS
    if i + OPT_RR_BYTES > n or wire[i] != 0 or wire[i + 1] != 0 or wire[i + 2] != OPT_TYPE:
        return None
    rdlen = (wire[i + 9] << 8) | wire[i + 10]
    option = i + OPT_RR_BYTES
    if option + rdlen != n or rdlen <= ECS_HEAD_BYTES:
        return None
    code, length, family, source = struct.unpack_from("!HHHB", wire, option)
    bits = FAMILY_BITS.get(family, 0)
    size = length - 4
    if code != ECS_CODE or length != rdlen - 4 or not 0 < source <= bits:
        return None
    if size != (source + 7) // 8:
        return None
    start = option + ECS_HEAD_BYTES
    value = int.from_bytes(wire[start:], "big") << (bits - 8 * size)
    if value & ((1 << (bits - source)) - 1):
        return None  # bits past the prefix: the parser decides what that means
    return start, bits, source, value


def echoed_scope(out: bytes, wire: bytes, start: int) -> int | None:
    """The scope prefix of `out` if it ends with the query's ECS option echoed (same family,
    source and address) as the only option of the last record, an OPT; else None."""
    size = len(wire) - start
    tail = len(out) - size
    head = tail - ECS_HEAD_BYTES
    rr = head - OPT_RR_BYTES
    if rr < 12 or out[tail:] != wire[start:]:
        return None
    if out[head : tail - 1] != wire[start - ECS_HEAD_BYTES : start - 1]:
        return None
    if out[rr] != 0 or out[rr + 1 : rr + 3] != b"\x00\x29":
        return None
    if (out[rr + 9] << 8) | out[rr + 10] != ECS_HEAD_BYTES + size:
        return None
    return out[tail - 1]


class WireCache:
    """Holds the tiers for the current state fingerprint. Several UDP threads answer at once:
    each takes the tiers for the fingerprint it read before answering and files its answer
    there, so an answer computed from an older state lands in tiers no newer query reads."""

    def __init__(self, entries: int = ENTRIES) -> None:
        self.entries = entries
        self._current: tuple[object, CacheTiers] = (None, CacheTiers(self))
        self.exact_hits = 0
        self.scope_hits = 0

    def tiers(self, fingerprint: object) -> CacheTiers:
        current_fingerprint, tiers = self._current  # one read: swapped whole by any thread
        if fingerprint != current_fingerprint:
            tiers = CacheTiers(self)
            self._current = (fingerprint, tiers)
        return tiers


class CacheTiers:
    def __init__(self, owner: WireCache) -> None:
        self.owner = owner
        self.exact: dict[tuple[bytes, str, str], tuple[bytes, int]] = {}
        self.scoped: dict[tuple[bytes, str, int, int], tuple[bytes, int]] = {}

    def get(self, wire: bytes, client: str, transport: str, counts: list[int]) -> bytes | None:
        """The cached response to `wire`, counted in `counts` (the caller's tally), or None."""
        key = (wire[2:], client, transport)
        hit = self.exact.get(key)
        if hit is not None:
            self.owner.exact_hits += 1
            counts[hit[1]] += 1
            return wire[:2] + hit[0]
        ecs = parse_ecs(wire)
        if ecs is None:
            return None
        start, bits, source, value = ecs
        head = wire[2:start]
        scoped = self.scoped
        for prefix in range(source, -1, -1):
            hit = scoped.get((head, transport, prefix, value >> (bits - prefix)))
            if hit is not None:
                self.owner.scope_hits += 1
                counts[hit[1]] += 1
                out = wire[:2] + hit[0] + wire[start:]
                self._store_exact(key, (out[2:], hit[1]))
                return out
        return None

    def put(self, wire: bytes, client: str, transport: str, out: bytes, outcome: int) -> None:
        self._store_exact((wire[2:], client, transport), (out[2:], outcome))
        ecs = parse_ecs(wire)
        if ecs is None:
            return
        start, bits, source, value = ecs
        scope = echoed_scope(out, wire, start)
        if scope is None or scope > source:
            return  # a scope longer than the source holds for part of the client's subnet only
        if len(self.scoped) >= self.owner.entries:
            self.scoped.clear()
        key = (wire[2:start], transport, scope, value >> (bits - scope))
        self.scoped[key] = (out[2 : len(out) - (len(wire) - start)], outcome)

    def _store_exact(self, key: tuple[bytes, str, str], body: tuple[bytes, int]) -> None:
        if len(self.exact) >= self.owner.entries:
            self.exact.clear()
        self.exact[key] = body
