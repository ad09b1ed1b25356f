"""Sticky canary choice, pure so nodes and tests agree on it bit for bit.

Each (function, client key) pair hashes to a bucket in 0..9999; a client gets the canary when
its bucket is below `percent * 100`. The bucket never depends on the percent or the versions,
so a client keeps its side while the percent stays put, and raising the percent only moves
clients from stable to canary (a bucket below p*100 is also below q*100 for q > p), never back.
The function name is part of the hash so one client is not the canary guinea pig everywhere.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Literal, TypeVar

BUCKETS = 10_000
COOKIE_RE = re.compile(r"^cookie:[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")

T = TypeVar("T")
Side = Literal["stable", "canary"]


def bucket(function: str, client_key: str) -> int:
    digest = hashlib.sha256(f"{function}\x00{client_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def side(percent: int, client_key: str, function: str) -> Side:
    return "canary" if bucket(function, client_key) < percent * (BUCKETS // 100) else "stable"


def choose(
    version_stable: T, version_canary: T | None, percent: int, client_key: str, function: str
) -> T:
    if version_canary is None or percent <= 0:
        return version_stable
    if side(percent, client_key, function) == "canary":
        return version_canary
    return version_stable


def valid_sticky(sticky: str) -> bool:
    """`ip` (the client's address) or `cookie:NAME` (that cookie's value, else the address)."""
    return sticky == "ip" or bool(COOKIE_RE.match(sticky))


def client_key(sticky: str, client_ip: str, cookies: Mapping[str, str]) -> str:
    if sticky.startswith("cookie:"):
        value = cookies.get(sticky.removeprefix("cookie:"))
        if value:
            return "cookie=" + value
    return "ip=" + client_ip
