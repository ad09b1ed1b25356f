"""Listen addresses in config files and on command lines: HOST:PORT, IPv6 in brackets."""

from __future__ import annotations

from edge.errors import ConfigError


def check_listen(value: str, where: str, *, optional: bool = True) -> str:
    """HOST:PORT ("[::1]:9153" for IPv6), or "" when `optional`; returned unchanged when valid.
    `where` names the file and key (or the option) in the error."""
    if not value and optional:
        return value
    empty = ' or ""' if optional else ""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{where} must be HOST:PORT (port 1-65535){empty}, got {value!r}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ConfigError(f"{where}: put an IPv6 address in brackets, as in [::1]:9153")
    return value
