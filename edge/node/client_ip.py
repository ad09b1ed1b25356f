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


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `text` names, or None. A zone (`fe80::1%eth0`) names an interface of the
    sender's host, meaningless here, and would hand a function any text after the `%`."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return None if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id else ip


def _trusted(addr: str, trusted: Sequence[Network]) -> bool:
    ip = _address(addr)
    return ip is not None and any(ip in net for net in trusted)


def client_ip(peer: str, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """`forwarded_for`: every x-forwarded-for header value, in order received."""
    if not _trusted(peer, trusted):
        return peer
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        if _address(hop) is None:
            return peer  # a garbled chain: fall back to what we saw on the wire
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer
