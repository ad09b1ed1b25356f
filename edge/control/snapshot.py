"""The configuration snapshot a node applies: format, signing, and strict verification.

Wire format (CBOR, cbor2 canonical=True everywhere):

    envelope = {"payload": bstr, "signature": bstr(64), "key_id": tstr}
        payload   : the canonical CBOR of the payload map below, as bytes
        signature : Ed25519 over exactly those payload bytes
        key_id    : hex of the first 8 bytes of sha256(raw 32-byte public key)

    payload = {
        "format": 1,
        "revision": uint,                 # the system-wide revision this is the state after
        "created_unix": float,            # when that revision was written
        "routes": [{"host": tstr, "path": tstr, "function": "<tenant>/<name>"}, ...],
        "functions": {"<tenant>/<name>": {
            "stable": V, "canary": V / null,
            "canary_percent": 0..100,
            "sticky": "ip" / "cookie:NAME",
            "config": {tstr: tstr / bstr}}, ...},  # optional (added within format 1; absent:
                                            # none): deploy-time values over edge.toml's
                                            # [config] (edge.control.values: key names, sizes,
                                            # count); a secret's is bstr, sealed under the
                                            # fleet's secrets key (edge.control.sealing)
        "regions": {"<region>": {         # optional (added within format 1; absent: none)
            "latitude": float / null, "longitude": float / null,
            "weight": 0..100 / null,      # null: not set at the control plane
            "drain": {"direction": "drain" / "undrain", "started_unix": float,
                      "over_s": float, "from_share": 0..1} / null}, ...},
        "nodes": {"<node id>": {"region": tstr, "url": "http(s)://...",  # optional
                                "ipv4": tstr, "ipv6": tstr}, ...},  # each optional (DNS)
    }
    V = {"function": "<tenant>/<name>", "number": uint, "sha256": hex, "size": uint,
         "manifest": {edge.toml as a map}, "signature": bstr(64)}
        signature : Ed25519 over canonical CBOR of {"function", "number", "sha256", "size",
                    "manifest"} (see edge.control.signing.version_message), so a version can be
                    checked on its own, e.g. a component cached on disk.

Readers ignore unknown keys (room to grow within format 1) and reject everything else that is
off: any decode error, wrong types, unknown format, a bad signature, a route to an unknown
function. `open_snapshot` raises only `SnapshotRejected`, whatever the input bytes.
Component bytes are fetched separately (`GET /v1/blobs/<sha256>`) and checked with `verify_blob`.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import cbor2

from edge.config.function import FunctionConfig, parse_function_config
from edge.config.ip import ip_of_version
from edge.control.errors import BlobMismatch, ConfigValueTooLarge, SnapshotRejected
from edge.control.records import NodeEndpoint, Version
from edge.control.regions import REGION_RE, Region, RegionDrain, check_region_fields
from edge.control.sealing import OVERHEAD_BYTES
from edge.control.signing import (
    SIGNATURE_BYTES,
    Signer,
    canonical_cbor,
    key_id,
    verify,
    version_message,
)
from edge.control.split import valid_sticky
from edge.control.values import MAX_VALUE_BYTES, check_count, check_key, check_values
from edge.errors import BadRequest, ConfigError
from edge.node.routing import Route, RoutingTable

if TYPE_CHECKING:  # nodes import this module; they need no SQLite
    from edge.control.store import Store

FORMAT = 1
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
T = TypeVar("T")


@dataclass(frozen=True)
class SignedVersion:
    function: str
    number: int
    sha256: str
    size: int
    manifest: dict[str, Any]
    signature: bytes
    config: FunctionConfig


@dataclass(frozen=True)
class FunctionDeployment:
    function: str
    stable: SignedVersion
    canary: SignedVersion | None
    canary_percent: int
    sticky: str
    values: Mapping[str, str] = field(default_factory=dict)  # over each version's [config]
    sealed: Mapping[str, bytes] = field(default_factory=dict)  # secret values, still sealed


@dataclass(frozen=True)
class Snapshot:
    revision: int
    created_unix: float
    routes: tuple[Route, ...]
    functions: Mapping[str, FunctionDeployment]
    regions: Mapping[str, Region] = field(default_factory=dict)
    nodes: Mapping[str, NodeEndpoint] = field(default_factory=dict)


# --- building (control plane) -------------------------------------------------------------------


def _version_map(v: Version, signer: Signer) -> dict[str, Any]:
    return {
        "function": v.function,
        "number": v.number,
        "sha256": v.sha256,
        "size": v.size_bytes,
        "manifest": v.manifest,
        "signature": signer.sign_version(v.function, v.number, v.sha256, v.size_bytes,
                                         v.manifest),
    }


def build_snapshot(store: Store, revision: int, signer: Signer) -> bytes:
    """The signed envelope for the configuration right after `revision`."""
    config = store.config_at(revision)
    routes: list[dict[str, str]] = []
    functions: dict[str, Any] = {}
    for r in config.functions:
        s = r.state
        routes.extend({"host": h, "path": p, "function": s.function} for h, p in s.routes)
        functions[s.function] = {
            "stable": _version_map(r.stable, signer),
            "canary": None if r.canary is None else _version_map(r.canary, signer),
            "canary_percent": s.canary_percent,
            "sticky": s.sticky,
        }
        if r.values:  # only when set: snapshots of functions without values stay as they were
            functions[s.function]["config"] = dict(r.values)
    routes.sort(key=lambda x: (x["host"], x["path"]))
    regions = {}
    for region in config.regions:
        state = region.state_json()
        del state["name"]
        regions[region.name] = state
    payload = canonical_cbor(
        {
            "format": FORMAT,
            "revision": config.revision,
            "created_unix": float(config.created_unix),
            "routes": routes,
            "functions": functions,
            "regions": regions,
            "nodes": {n.id: _node_map(n) for n in config.nodes},
        }
    )
    return sign_payload(payload, signer)


def _node_map(n: NodeEndpoint) -> dict[str, str]:
    # Addresses only when set: snapshots of nodes without them stay as they were.
    entry = {"region": n.region, "url": n.url}
    entry.update({k: v for k, v in (("ipv4", n.ipv4), ("ipv6", n.ipv6)) if v})
    return entry


def sign_payload(payload: bytes, signer: Signer) -> bytes:
    return canonical_cbor(
        {"payload": payload, "signature": signer.sign(payload), "key_id": signer.key_id}
    )


# --- opening (nodes) ----------------------------------------------------------------------------


def open_snapshot(envelope: bytes, public_key: bytes) -> Snapshot:
    """Verifies and parses a snapshot. Raises SnapshotRejected for anything not exactly right."""
    try:
        return _open(envelope, public_key)
    except SnapshotRejected:
        raise
    except Exception as e:  # the promise: our typed error, nothing else
        raise SnapshotRejected(f"malformed snapshot: {type(e).__name__}") from None


def _open(envelope: bytes, public_key: bytes) -> Snapshot:
    outer = _decode(envelope, "envelope")
    payload = _get(outer, "payload", bytes, "envelope")
    signature = _get(outer, "signature", bytes, "envelope")
    kid = _get(outer, "key_id", str, "envelope")
    if kid != key_id(public_key):
        raise SnapshotRejected(f"snapshot signed by key {kid[:16]!r}, not by the configured key")
    if not verify(public_key, signature, payload):
        raise SnapshotRejected("snapshot signature does not verify")
    body = _decode(payload, "payload")
    fmt = _get(body, "format", int, "payload")
    if fmt != FORMAT:
        raise SnapshotRejected(f"unknown snapshot format {fmt}")
    revision = _get(body, "revision", int, "payload")
    if revision < 0:
        raise SnapshotRejected("negative revision")
    created = _get(body, "created_unix", float, "payload")

    functions: dict[str, FunctionDeployment] = {}
    for key, raw in _get(body, "functions", dict, "payload").items():
        where = f"functions[{key!r}]"
        if not isinstance(key, str):
            raise SnapshotRejected("function keys must be strings")
        entry = _as(raw, dict, where)
        percent = _get(entry, "canary_percent", int, where)
        sticky = _get(entry, "sticky", str, where)
        if not 0 <= percent <= 100 or not valid_sticky(sticky):
            raise SnapshotRejected(f"{where}: bad canary_percent or sticky")
        canary_raw = entry.get("canary")
        values, sealed = _config(_as(entry.get("config", {}), dict, f"{where}.config"), where)
        functions[key] = FunctionDeployment(
            key,
            _signed_version(_get(entry, "stable", dict, where), key, public_key),
            None if canary_raw is None else _signed_version(_as(canary_raw, dict, where), key,
                                                            public_key),
            percent,
            sticky,
            values,
            sealed,
        )

    routes = []
    for raw in _get(body, "routes", list, "payload"):
        r = _as(raw, dict, "route")
        route = Route(_get(r, "host", str, "route"), _get(r, "path", str, "route"),
                      _get(r, "function", str, "route"))
        if route.function not in functions:
            raise SnapshotRejected(f"route {route.host}{route.path_prefix}: unknown function")
        routes.append(route)
    try:
        RoutingTable(routes)  # rejects duplicates and paths without a leading "/"
    except ConfigError as e:
        raise SnapshotRejected(e.message) from None
    regions = {
        name: _region(name, raw) for name, raw in _as(body.get("regions", {}), dict,
                                                       "regions").items()
    }  # fmt: skip
    nodes = {}
    for node_id, raw in _as(body.get("nodes", {}), dict, "nodes").items():
        where = f"nodes[{node_id!r}]"
        entry = _as(raw, dict, where)
        node = NodeEndpoint(
            _as(node_id, str, where), _get(entry, "region", str, where),
            _get(entry, "url", str, where), _address(entry, "ipv4", 4, where),
            _address(entry, "ipv6", 6, where),
        )  # fmt: skip
        if not node.url.startswith(("http://", "https://")):
            raise SnapshotRejected(f"{where}: url must be http(s)")
        nodes[node.id] = node
    return Snapshot(revision, created, tuple(routes), functions, regions, nodes)


def _config(raw: dict[Any, Any], where: str) -> tuple[dict[str, str], dict[str, bytes]]:
    """Plain values (every rule of edge.control.values) and sealed ones (opened, or refused
    with a typed error for that function alone, when the node builds what it serves)."""
    sealed = {k: v for k, v in raw.items() if isinstance(v, bytes)}
    try:
        check_count(len(raw))
        for k, v in sealed.items():
            check_key(k)
            if len(v) > MAX_VALUE_BYTES + OVERHEAD_BYTES:
                raise ConfigValueTooLarge(f"sealed value of {k!r} is {len(v)} bytes")
        values = check_values({k: v for k, v in raw.items() if k not in sealed})
    except BadRequest as e:
        raise SnapshotRejected(f"{where}.config: {e.message}") from None
    return values, sealed


def _region(name: Any, raw: Any) -> Region:
    where = f"regions[{name!r}]"
    if not isinstance(name, str) or not REGION_RE.match(name):
        raise SnapshotRejected(f"{where}: bad region name")
    entry = _as(raw, dict, where)
    lat, lon, weight = entry.get("latitude"), entry.get("longitude"), entry.get("weight")
    if (lat is None) != (lon is None):
        raise SnapshotRejected(f"{where}: latitude and longitude go together")
    if lat is not None:
        lat = _as(lat, float, f"{where}.latitude")
        lon = _as(lon, float, f"{where}.longitude")
    if weight is not None:
        weight = _as(weight, int, f"{where}.weight")
    try:
        check_region_fields(lat or 0.0, lon or 0.0, weight)
    except ValueError as e:
        raise SnapshotRejected(f"{where}: {e}") from None
    drain = None
    if entry.get("drain") is not None:
        d = _as(entry["drain"], dict, f"{where}.drain")
        drain = RegionDrain(
            name,
            _get(d, "direction", str, f"{where}.drain"),
            _get(d, "started_unix", float, f"{where}.drain"),
            _get(d, "over_s", float, f"{where}.drain"),
            _get(d, "from_share", float, f"{where}.drain"),
        )
        if drain.direction not in ("drain", "undrain") or drain.over_s < 0 or not (
            0 <= drain.from_share <= 1
        ):
            raise SnapshotRejected(f"{where}: bad drain")
    return Region(name, lat, lon, weight, drain)


def _signed_version(raw: dict[Any, Any], function: str, public_key: bytes) -> SignedVersion:
    where = f"version of {function!r}"
    manifest = _get(raw, "manifest", dict, where)
    if not all(isinstance(k, str) for k in manifest):
        raise SnapshotRejected(f"{where}: manifest keys must be strings")
    try:
        config = parse_function_config(manifest, where)
    except ConfigError as e:
        raise SnapshotRejected(f"{where}: bad manifest: {e.message}") from None
    v = SignedVersion(
        function=_get(raw, "function", str, where),
        number=_get(raw, "number", int, where),
        sha256=_get(raw, "sha256", str, where),
        size=_get(raw, "size", int, where),
        manifest=manifest,
        signature=_get(raw, "signature", bytes, where),
        config=config,
    )
    if v.function != function:
        raise SnapshotRejected(f"{where}: names function {v.function!r}")
    verify_version(v, public_key)
    return v


def verify_version(v: SignedVersion, public_key: bytes) -> None:
    if not SHA256_RE.match(v.sha256) or v.size < 0 or v.number < 1:
        raise SnapshotRejected(f"{v.function} v{v.number}: malformed version")
    if len(v.signature) != SIGNATURE_BYTES or not verify(
        public_key, v.signature, version_message(v.function, v.number, v.sha256, v.size,
                                                 v.manifest)
    ):
        raise SnapshotRejected(f"{v.function} v{v.number}: version signature does not verify")


def verify_blob(v: SignedVersion, data: bytes) -> None:
    if len(data) != v.size:
        raise BlobMismatch(f"{v.function} v{v.number}: {len(data)} bytes, signed size {v.size}")
    if hashlib.sha256(data).hexdigest() != v.sha256:
        raise BlobMismatch(f"{v.function} v{v.number}: sha256 differs from the signed version")


def _decode(data: bytes, what: str) -> dict[Any, Any]:
    if not isinstance(data, bytes):
        raise SnapshotRejected(f"{what} must be bytes")
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream).decode()
    except Exception:  # cbor2 raises many types on garbage
        raise SnapshotRejected(f"{what} is not valid CBOR") from None
    if stream.tell() != len(data):  # cbor2.loads would ignore trailing bytes; we do not
        raise SnapshotRejected(f"{what} has trailing bytes")
    return _as(value, dict, what)


def _as(value: Any, kind: type[T], where: str) -> T:
    # bool is an int in Python but never a valid number here.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SnapshotRejected(f"{where}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _address(d: dict[Any, Any], key: str, version: int, where: str) -> str:
    text = _as(d.get(key, ""), str, f"{where}.{key}")
    addr = ip_of_version(text, version) if text else None
    if text and addr is None:
        raise SnapshotRejected(f"{where}.{key} must be an IPv{version} address")
    return str(addr or "")


def _get(d: dict[Any, Any], key: str, kind: type[T], where: str) -> T:
    if key not in d:
        raise SnapshotRejected(f"{where}: missing {key!r}")
    return _as(d[key], kind, f"{where}.{key}")
