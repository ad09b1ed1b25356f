"""Which address is the client: `x-forwarded-for` counts only when the peer is a trusted proxy.

Walk the chain from the right (the hop nearest to us) and take the first address that is not
itself a trusted proxy; anything left of it was written by the client and can be forged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Sequence[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _trusted(addr: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_ip(peer: str, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """`forwarded_for`: every x-forwarded-for header value, in order received."""
    if not _trusted(peer, trusted):
        return peer
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a garbled chain: fall back to what we saw on the wire
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer
