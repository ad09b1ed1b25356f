"""IP address text of a given version, as node reports, snapshots and listings carry it."""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def ip_of_version(text: object, version: int) -> IPAddress | None:
    """`text` as an address of IP `version` (4 or 6); None when it is anything else."""
    if not isinstance(text, str):
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return addr if addr.version == version else None
