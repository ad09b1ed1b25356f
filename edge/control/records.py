"""Typed rows the store hands out. All frozen: a record is a fact as of one read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge.control.regions import Region
from edge.control.values import ConfigValue

SCOPES = ("deploy", "operate", "read")
# Manages tenants and tokens of every tenant: the operator's scope, not a tenant's.
ADMIN_SCOPE = "admin"
TOKEN_SCOPES = (ADMIN_SCOPE, *SCOPES)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant's api token (with scopes) or a node token (no tenant)."""

    kind: str  # "api" | "node"
    tenant_id: int | None
    tenant: str | None
    scopes: frozenset[str]
    label: str
    expires_unix: float | None = None  # None: never

    def expired(self, now_unix: float) -> bool:
        return self.expires_unix is not None and now_unix >= self.expires_unix


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: never its secret, never its hash."""

    id: int
    kind: str  # "api" | "node"
    tenant: str | None
    scopes: tuple[str, ...]
    name: str
    created_unix: float
    revoked_unix: float | None
    expires_unix: float | None = None  # None: never

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "tenant": self.tenant, "scopes": list(self.scopes),
            "name": self.name, "created_unix": self.created_unix,
            "revoked_unix": self.revoked_unix, "revoked": self.revoked_unix is not None,
            "expires_unix": self.expires_unix,
        }  # fmt: skip


@dataclass(frozen=True)
class Tenant:
    name: str
    created_unix: float
    functions: int  # deployed: what nodes serve, as `edge status` lists them
    active_tokens: int
    # Every function with an uploaded version, deployed or not (a deleted one keeps its).
    functions_with_versions: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "created_unix": self.created_unix,
                "functions": self.functions,
                "functions_with_versions": self.functions_with_versions,
                "active_tokens": self.active_tokens}


@dataclass(frozen=True)
class Version:
    function: str  # "<tenant>/<name>"
    number: int
    sha256: str
    size_bytes: int
    manifest: dict[str, Any]
    message: str
    author: str
    created_unix: float


@dataclass(frozen=True)
class FunctionState:
    """A function's deployment as of one revision."""

    function: str
    stable: int
    canary: int | None = None
    canary_percent: int = 0
    sticky: str = "ip"
    routes: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "stable": self.stable,
            "canary": self.canary,
            "canary_percent": self.canary_percent,
            "sticky": self.sticky,
            "routes": [f"{h}{p}" for h, p in self.routes],
        }


@dataclass(frozen=True)
class FunctionSummary:
    """One of a tenant's functions as `GET /v1/functions` lists it."""

    name: str
    deployment: FunctionState | None  # None: not deployed (never yet, or deleted)
    # Versions are numbered from 1 and never deleted, so this is also the newest one's number.
    version_count: int
    created_unix: float
    updated_unix: float  # its newest version or revision (its creation if neither)
    deleted: bool  # its last revision is a delete, and no deploy since

    def to_json(self) -> dict[str, Any]:
        d = self.deployment
        return {
            "name": self.name,
            "stable": d.stable if d else None,
            "canary": d.canary if d else None,
            "canary_percent": d.canary_percent if d else 0,
            "sticky": d.sticky if d else None,
            "routes": d.to_json()["routes"] if d else [],
            "version_count": self.version_count,
            "created_unix": self.created_unix,
            "updated_unix": self.updated_unix,
            "deleted": self.deleted,
        }


@dataclass(frozen=True)
class Removal:
    """The outcome of `Store.delete_function`: the "delete" revision (the current one if the
    function was not deployed, changed False) and the deployment it took away."""

    revision: int
    changed: bool
    removed: FunctionState | None


@dataclass(frozen=True)
class Change:
    """The outcome of one write: the revision it made (or the current one if nothing changed)."""

    revision: int
    changed: bool
    state: FunctionState


@dataclass(frozen=True)
class Reseal:
    """The outcome of `Store.reseal_secrets`: how many sealed values (current ones and those
    the revision log remembers) now are under the new key, and the "config" revisions that
    carry the current ones to nodes, one per function that has any."""

    values: int
    functions: tuple[str, ...]
    revisions: tuple[int, ...]


@dataclass(frozen=True)
class ConfigChange:
    """The outcome of `Store.set_config`: the "config" revision (the current one if nothing
    changed) and the function's values after it."""

    revision: int
    changed: bool
    values: tuple[ConfigValue, ...]


@dataclass(frozen=True)
class Resolved:
    """A function's deployment with its versions looked up, ready for a snapshot."""

    state: FunctionState
    stable: Version
    canary: Version | None
    # Deploy-time config values; a secret's as sealed bytes (edge.control.sealing).
    values: Mapping[str, str | bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeEndpoint:
    """Where another node can reach a node (for L7 spill), and the addresses the geo-DNS
    server hands out for it ("": none of that family): part of the configuration."""

    id: str
    region: str
    url: str
    ipv4: str = ""
    ipv6: str = ""


@dataclass(frozen=True)
class RegionChange:
    revision: int
    changed: bool
    region: Region


@dataclass(frozen=True)
class ConfigAt:
    revision: int
    created_unix: float
    functions: tuple[Resolved, ...] = field(default_factory=tuple)
    regions: tuple[Region, ...] = field(default_factory=tuple)
    nodes: tuple[NodeEndpoint, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Node:
    id: str
    region: str
    applied_revision: int
    last_report_unix: float
    healthy: bool
    convergence_ms: float | None
    last_error: str = ""
    url: str = ""
    requests_total: int | None = None
    requests_per_s: float | None = None
    ipv4: str = ""  # what the geo-DNS server answers for this node; "": none of that family
    ipv6: str = ""


@dataclass(frozen=True)
class RevisionRow:
    number: int
    created_unix: float
    function: str | None
    kind: str
    author: str
    change: dict[str, Any]
    subject: str | None = None  # the region or node of a "region" or "node" change
