"""Host + path-prefix routing, as a pure, immutable table that is swapped in one step.

Rules: an exact host beats the wildcard `*`; among routes of that host the longest path prefix
wins; a prefix matches on path-segment boundaries (`/api` matches `/api` and `/api/x`, not
`/apix`). Hosts compare case-insensitively and without a port.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.errors import ConfigError


@dataclass(frozen=True)
class Route:
    host: str  # lower-case host name, or "*"
    path_prefix: str  # starts with "/"
    function: str

    @staticmethod
    def parse(spec: str, function: str) -> Route:
        """`example.com/api` or `*/` or `/api` (any host) → Route."""
        if "/" not in spec:
            spec += "/"
        host, _, path = spec.partition("/")
        return Route(normalize_host(host or "*"), "/" + path, function)


def normalize_host(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8080
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _prefix_matches(prefix: str, path: str) -> bool:
    if prefix == "/" or path == prefix:
        return True
    trimmed = prefix.rstrip("/")
    return path.startswith(trimmed + "/")


class RoutingTable:
    def __init__(self, routes: list[Route]) -> None:
        seen: set[tuple[str, str]] = set()
        for r in routes:
            if not r.path_prefix.startswith("/"):
                raise ConfigError(f"route {r.host}{r.path_prefix}: path must start with '/'")
            key = (r.host, r.path_prefix.rstrip("/") or "/")
            if key in seen:
                raise ConfigError(f"route {r.host}{r.path_prefix} is defined twice")
            seen.add(key)
        # Longest prefix first, so the first match is the best one.
        self.routes = sorted(routes, key=lambda r: len(r.path_prefix.rstrip("/")), reverse=True)

    def match(self, host: str, path: str) -> Route | None:
        host = normalize_host(host)
        for wanted in (host, "*"):
            for route in self.routes:
                if route.host == wanted and _prefix_matches(route.path_prefix, path):
                    return route
        return None

    def functions(self) -> set[str]:
        return {r.function for r in self.routes}
