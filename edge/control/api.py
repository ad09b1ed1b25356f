"""The control plane's HTTP API (Starlette). Every call needs `Authorization: Bearer <token>`.

Order of checks, so answers leak nothing: no, unknown or revoked token → 401; a token of the
wrong kind or without the scope → 403 (independent of any function); then another tenant's
function looks exactly like a missing one → 404. Tenants, tokens and the secrets key's online
rotation are managed through `edge.control.admin_api` (scope "admin"). All errors go through
`error_response`, the one place that turns an EdgeError into a status and a JSON body
{"error": reason, "message": ...}.

Store calls run on worker threads (fsync and SQLite must not stall long polls). Long polls wait
on `edge.control.feeds`: a change signs its snapshot once and then wakes every waiting node at
the same moment; `GET /v1/status?revision=R` wakes on the node report that completes R (or
refuses it, leaving no node worth waiting for). All of
it is per process: run one server process per data directory. Known tokens, recent snapshots
and blobs are answered from memory, so a deploy's burst of node requests touches no disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from edge.config.function import NAME_RE, parse_function_config
from edge.control.admin_api import admin_routes, require_admin
from edge.control.bodies import (
    field,
    flag_param,
    int_param,
    json_body,
    number,
    optional_int,
    optional_ip,
    read_body,
    wait_param,
)
from edge.control.closing import close_unread_bodies
from edge.control.component_check import check_component_framing
from edge.control.config_api import config_routes
from edge.control.dashboard import Dashboard
from edge.control.errors import Forbidden, NodeAlive, NotFound, PayloadTooLarge, Unauthorized
from edge.control.feeds import NodeWatch, RevisionFeed, SnapshotCache
from edge.control.health import UNCHECKED, ActiveChecks, CheckTable
from edge.control.live import TrafficWindow, parse_report
from edge.control.log_store import LogStore
from edge.control.logs_api import log_routes
from edge.control.metrics import ControlMetrics
from edge.control.records import Change, FunctionState, Node, Principal, RegionChange, Version
from edge.control.regions import MAX_OVER_S, REGION_RE, Region
from edge.control.rotation import KeyRotation
from edge.control.signing import Signer
from edge.control.snapshot import build_snapshot
from edge.control.split import valid_sticky
from edge.control.status import node_json, status_json
from edge.control.store import DB_NAME, Store
from edge.control.values import parse_change
from edge.control.wire import METADATA_HEADER, decode_metadata
from edge.errors import BadRequest, ConfigError, EdgeError
from edge.node.http import declares_body
from edge.node.routing import normalize_host
from edge.traffic.health_checker import cancel_all

log = logging.getLogger(__name__)

KIB = 1024
MIB = 1024 * KIB
T = TypeVar("T")


@dataclass(frozen=True)
class ControlSettings:
    long_poll_max_s: float = 60.0
    long_poll_default_s: float = 25.0
    node_stale_after_s: float = 60.0
    max_component_bytes: int = 64 * MIB
    max_metadata_bytes: int = 16 * KIB
    traffic_window_s: float = 10.0
    # Function log lines kept (edge.control.log_store): the newest per function, none older.
    log_max_lines_per_function: int = 100_000
    log_max_age_s: float = 24 * 3600.0
    # Active checks of every node's /healthz (edge.control.health); rise/fall in checks.
    health_interval_s: float = 2.0
    health_timeout_s: float = 1.0
    health_rise: int = 2
    health_fall: int = 2


def error_response(error: EdgeError) -> JSONResponse:
    headers = {"www-authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(
        {"error": error.reason, "message": error.message}, status_code=error.status,
        headers=headers,
    )


def closing_if_body(request: Request, response: Response) -> Response:
    """For an answer made outside the middleware (a crash's): it goes out before the body was
    read, so the server cannot reuse the connection and says so (see edge.control.closing)."""
    if declares_body(request.scope["headers"]):
        response.headers["connection"] = "close"
    return response


def parse_route_spec(spec: str) -> tuple[str, str]:
    """`example.com/api` → ("example.com", "/api"); trailing slashes do not make a new route."""
    if not isinstance(spec, str) or not spec or len(spec) > 512 or not spec.isprintable() \
            or " " in spec:
        raise BadRequest(f"route must look like HOST/PATH, got {spec!r}")
    host, _, path = spec.partition("/")
    host = normalize_host(host)
    if not host:
        raise BadRequest(f"route {spec!r} has no host (use * for any host)")
    path = path.strip("/")
    return host, f"/{path}" if path else "/"


def version_json(v: Version) -> dict[str, Any]:
    return {
        "function": v.function,
        "number": v.number,
        "sha256": v.sha256,
        "size": v.size_bytes,
        "message": v.message,
        "author": v.author,
        "created_unix": v.created_unix,
        "manifest": v.manifest,
    }


def change_json(c: Change) -> dict[str, Any]:
    return {"revision": c.revision, "changed": c.changed, "deployment": c.state.to_json()}


def regions_json(
    regions: dict[str, Region], nodes: list[Node], now: float, stale_after_s: float,
    checks: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """GET /v1/regions' list (pure): configured regions and regions nodes report from.
    `checks`: the control plane's active checks by node id (`CheckTable.views`)."""
    out = []
    checks = checks or {}
    for name in sorted(set(regions) | {n.region for n in nodes}):
        r = regions.get(name, Region(name))
        mine = [n for n in nodes if n.region == name]
        fresh = [n for n in mine if now - n.last_report_unix <= stale_after_s]
        rates = [n.requests_per_s for n in fresh if n.requests_per_s is not None]
        check = {n.id: checks.get(n.id, UNCHECKED)["check"] for n in mine}
        out.append({
            **r.state_json(),
            "configured": name in regions,
            "state": r.state(now),
            "share": round(r.share(now), 4),
            "nodes": len(mine),
            "healthy_nodes": sum(1 for n in fresh if n.healthy),
            "stale_nodes": len(mine) - len(fresh),
            "requests_per_s": round(sum(rates), 3) if rates else None,
            "node_urls": sorted(
                n.url for n in fresh if n.url and n.healthy and check[n.id] != "down"
            ),
            "endpoints": [
                {"node": n.id, "url": n.url, "ipv4": n.ipv4 or None, "ipv6": n.ipv6 or None,
                 "stale": n not in fresh}
                for n in mine if n.url
            ],
            "check_up": sum(1 for n in mine if check[n.id] == "up"),
            "check_down": sum(1 for n in mine if check[n.id] == "down"),
            # Healthy by its own word, and alive by our check (by fresh reports if unchecked).
            "up_nodes": sum(1 for n in mine if n.healthy and (
                check[n.id] == "up" or (check[n.id] == "unknown" and n in fresh)
            )),
        })  # fmt: skip
    return out


def create_app(
    store: Store,
    signer: Signer,
    settings: ControlSettings | None = None,
    now: Callable[[], float] = time.time,
    secrets_key_file: Path | None = None,
) -> Starlette:
    """`secrets_key_file`: where the store's secrets key was read from, which an online
    rotation writes the new key over (None: no online rotation)."""
    settings = settings or ControlSettings()
    feed = RevisionFeed(store.revision())
    metrics = ControlMetrics(
        store.revision, store.nodes, store.revision_created, settings.node_stale_after_s,
        store.now,
    )  # fmt: skip
    traffic = TrafficWindow(settings.traffic_window_s, now)
    logs = LogStore(store.data_dir / DB_NAME, max_lines=settings.log_max_lines_per_function,
                    max_age_s=settings.log_max_age_s, now=store.now)  # fmt: skip
    watch = NodeWatch(store.nodes(), settings.node_stale_after_s, now)
    checked = CheckTable(
        rise=settings.health_rise, fall=settings.health_fall,
        interval_s=settings.health_interval_s,
        on_change=lambda state: metrics.check_changes.labels(state.value).inc(),
    )  # fmt: skip

    def check_views() -> dict[str, dict[str, Any]]:
        return checked.views(time.monotonic(), now())

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        # The probes' HTTP client lives on the serving event loop, started and closed with it.
        checks = ActiveChecks(checked, settings.health_timeout_s, time.monotonic)

        async def follow_nodes() -> None:
            while True:  # new nodes are probed within an interval of their first report
                try:
                    await checks.follow(await run(store.nodes))
                except (EdgeError, sqlite3.Error) as e:
                    log.warning("health checks: cannot read the node table: %s", e)
                await asyncio.sleep(settings.health_interval_s)

        follower = asyncio.create_task(follow_nodes(), name="control-health")
        try:
            yield
        finally:
            await cancel_all([follower])
            await checks.aclose()
            logs.close()

    def run(fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        return anyio.to_thread.run_sync(fn, *args)

    snapshots = SnapshotCache(lambda revision: run(build_snapshot, store, revision, signer))

    async def publish(revision: int) -> None:
        # Signed before anyone is woken, so every waiting node is answered from memory.
        with contextlib.suppress(EdgeError):  # a waiter retries the build and reports why
            await snapshots.get(revision)
        await feed.publish(revision)

    async def authenticate(request: Request) -> Principal:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
        token = token.strip()
        principal = store.known_principal(token) or await run(store.authenticate, token)
        if principal is None:
            raise Unauthorized("unknown token")
        if principal.expired(store.now()):
            raise Unauthorized("token expired")
        return principal

    async def tenant(request: Request, scope: str) -> tuple[int, Principal]:
        p = await authenticate(request)
        if p.kind != "api" or p.tenant_id is None:
            raise Forbidden("node tokens can only fetch snapshots and blobs and report")
        if scope not in p.scopes:
            raise Forbidden(f"this token lacks the {scope!r} scope")
        return p.tenant_id, p

    async def node(request: Request) -> Principal:
        p = await authenticate(request)
        if p.kind != "node":
            raise Forbidden("this endpoint is for edge nodes (node token)")
        return p

    def function_name(request: Request) -> str:
        name = str(request.path_params["name"])
        if not NAME_RE.match(name):
            raise BadRequest(f"bad function name {name!r}")
        return name

    async def changed(change: Change) -> JSONResponse:
        await publish(change.revision)
        return JSONResponse(change_json(change))

    # --- tenant endpoints -----------------------------------------------------------------------

    async def upload_version(request: Request) -> Response:
        """Upload a new immutable version (scope deploy).

        Body: the component bytes (application/wasm). Header Edge-Metadata: base64url of JSON
        {"manifest": <edge.toml as an object>, "message": str}. Answers 201 with the version.
        """
        tenant_id, p = await tenant(request, "deploy")
        name = function_name(request)
        manifest, message = _metadata(request, settings)
        try:
            config = parse_function_config(manifest, f"manifest of {name}")
        except ConfigError as e:
            raise BadRequest(e.message) from None
        if config.name != name:
            raise BadRequest(f"manifest names function {config.name!r}, not {name!r}")
        data = await read_body(request, settings.max_component_bytes, "component")
        if not data:
            raise BadRequest("empty component")
        check_component_framing(data)
        # The blob is durable before the row that references it exists.
        sha256 = await run(store.blobs.put, data)
        version = await run(
            lambda: store.create_version(
                tenant_id, name, sha256=sha256, size_bytes=len(data), manifest=manifest,
                message=message, author=p.label,
            )
        )
        return JSONResponse(version_json(version), status_code=201)

    async def list_functions(request: Request) -> Response:
        """This tenant's functions by name (scope read).

        Each: `name`, `stable` (the deployed version, null if not deployed), `canary`,
        `canary_percent` and `sticky` (how clients are split), `routes`, `version_count`
        (versions number from 1, so also the newest's number), `created_unix`, `updated_unix`
        (its newest version or change) and `deleted` (taken out of service by
        `DELETE /v1/functions/NAME`, not deployed since).
        Query: deleted=1 to list deleted functions too (left out by default)."""
        tenant_id, _ = await tenant(request, "read")
        with_deleted = flag_param(request.query_params.get("deleted"), "deleted")
        listed = await run(store.functions, tenant_id)
        return JSONResponse({"functions": [
            f.to_json() for f in listed if with_deleted or not f.deleted
        ]})  # fmt: skip

    async def list_versions(request: Request) -> Response:
        """Versions of a function, oldest first, and its deployment (scope read)."""
        tenant_id, _ = await tenant(request, "read")
        name = function_name(request)
        versions = await run(store.versions, tenant_id, name)
        state: FunctionState | None = await run(store.deployment, tenant_id, name)
        return JSONResponse(
            {"function": name, "versions": [version_json(v) for v in versions],
             "deployment": state.to_json() if state else None}
        )

    async def deploy(request: Request) -> Response:
        """Make a version stable, optionally replacing the routes (scope deploy).

        Body: {"version": int, "routes": ["host/path", ...] (optional: keep the current),
        "config": {"values": {...}, "secret": [...]} (optional: config values changed with the
        deploy, as PUT .../config; nodes get both in one snapshot)}.
        """
        tenant_id, p = await tenant(request, "deploy")
        name = function_name(request)
        body = await json_body(request)
        version = field(body, "version", int)
        routes = None
        if body.get("routes") is not None:
            specs = field(body, "routes", list)
            routes = [parse_route_spec(s) for s in specs]
        values = None if body.get("config") is None else parse_change(field(body, "config", dict))
        return await changed(
            await run(store.deploy, tenant_id, name, version, routes, p.label, values)
        )

    async def delete_function(request: Request) -> Response:
        """Take a function out of service (scope deploy): its deployment and routes go in one
        "delete" revision, so nodes answer its routes 404 no_route from then on.

        Its versions stay (`GET .../versions` lists them; a deploy of the same name makes it
        live again, with the routes it is given). Answers {"revision", "changed", "function",
        "deleted": the deployment removed}; a function that is not deployed changes nothing
        (changed false, deleted null); one that does not exist is 404."""
        tenant_id, p = await tenant(request, "deploy")
        name = function_name(request)
        gone = await run(store.delete_function, tenant_id, name, p.label)
        if gone.changed:
            await publish(gone.revision)
        return JSONResponse({
            "revision": gone.revision, "changed": gone.changed, "function": name,
            "deleted": gone.removed.to_json() if gone.removed else None,
        })  # fmt: skip

    async def canary(request: Request) -> Response:
        """Send a percentage of clients to a version (scope operate).

        Body: {"version": int or null (null removes the canary), "percent": 0..100,
        "sticky": "ip" or "cookie:NAME" (optional)}.
        """
        tenant_id, p = await tenant(request, "operate")
        name = function_name(request)
        body = await json_body(request)
        version = optional_int(body, "version")
        percent = field(body, "percent", int, 0)
        sticky = body.get("sticky")
        if sticky is not None and not (isinstance(sticky, str) and valid_sticky(sticky)):
            raise BadRequest("sticky must be 'ip' or 'cookie:NAME'")
        return await changed(
            await run(store.set_canary, tenant_id, name, version, percent, sticky, p.label)
        )

    async def promote(request: Request) -> Response:
        """Make the canary the stable version (scope operate)."""
        tenant_id, p = await tenant(request, "operate")
        return await changed(await run(store.promote, tenant_id, function_name(request), p.label))

    async def rollback(request: Request) -> Response:
        """Return to an earlier version (scope operate). Body: {"to": int (optional; default:
        the stable version before the current one, or, during a canary, the stable version:
        the canary alone is dropped)}."""
        tenant_id, p = await tenant(request, "operate")
        name = function_name(request)
        to = optional_int(await json_body(request), "to")
        return await changed(await run(store.rollback, tenant_id, name, to, p.label))

    async def status(request: Request) -> Response:
        """The current revision, every node and region, and this tenant's deployments (scope
        read).

        Per node, `check` is the control plane's own /healthz check ("up", "down", or
        "unknown": not checked yet, or no url reported) and `check_changed_unix` its last
        transition; per region, `check_up` and `check_down` count them.

        Query (optional): revision=R and wait_s=S: answer as soon as every live node has
        applied R or reported refusing it (woken by the report that completes it), or after S
        seconds (at most the server's long-poll limit) with the laggards still behind.
        `edge deploy` waits so."""
        tenant_id, _ = await tenant(request, "read")
        if "revision" in request.query_params:
            wanted = int_param(request.query_params["revision"], "revision")
            await watch.wait_applied(wanted, query_wait_s(request))

        views = check_views()

        def read() -> dict[str, Any]:
            out = status_json(store.revision(), store.nodes(), now(), settings.node_stale_after_s,
                              views)
            states = [store.deployment(tenant_id, n) for n in store.function_names(tenant_id)]
            out["functions"] = [s.to_json() for s in states if s is not None]
            return out

        return JSONResponse(await run(read))

    def query_wait_s(request: Request) -> float:
        text = request.query_params.get("wait_s", str(settings.long_poll_default_s))
        return wait_param(text, settings.long_poll_max_s)

    # --- node endpoints -------------------------------------------------------------------------

    async def node_snapshot(request: Request) -> Response:
        """Long poll for the signed configuration snapshot (node token).

        Query: after=N (the revision the node has; default -1: answer at once), wait_s (at most
        the server's limit). Answers application/cbor as soon as the revision differs from N,
        or 204 after wait_s.
        """
        await node(request)
        after = int_param(request.query_params.get("after", "-1"), "after")
        revision = await feed.wait_beyond(after, query_wait_s(request))
        if revision is None:
            return Response(status_code=204)
        return Response(
            await snapshots.get(revision), media_type="application/cbor",
            headers={"edge-revision": str(revision)},
        )

    async def blob(request: Request) -> Response:
        """Component bytes by sha256 (node token)."""
        await node(request)
        sha256 = str(request.path_params["sha256"])
        data = store.blobs.cached(sha256) or await run(store.blobs.get, sha256)
        return Response(data, media_type="application/wasm")

    async def node_report(request: Request) -> Response:
        """A node says what it applied (node token). Body: {"node_id", "region", "revision",
        "healthy", "convergence_ms" (optional), "last_error" (optional: why it refused the
        newest snapshot), "url", "ipv4" and "ipv6" (optional: where the geo-DNS server sends
        clients to it)}."""
        await node(request)
        body = await json_body(request)
        node_id = field(body, "node_id", str)
        region = field(body, "region", str)
        if not 0 < len(node_id) <= 128 or not 0 < len(region) <= 64:
            raise BadRequest("node_id (1..128 chars) and region (1..64) are required")
        revision = field(body, "revision", int)
        healthy = field(body, "healthy", bool)
        conv = None if body.get("convergence_ms") is None else number(body, "convergence_ms")
        last_error = body.get("last_error", "")
        if not isinstance(last_error, str) or len(last_error) > 2000:
            raise BadRequest("last_error must be a string of at most 2000 characters")
        url = body.get("url", "")
        if not isinstance(url, str) or len(url) > 300 or (
            url and not url.startswith(("http://", "https://"))
        ):
            raise BadRequest("url must be an http(s) URL of at most 300 characters")
        requests_total = optional_int(body, "requests_total")
        if requests_total is not None and requests_total < 0:
            raise BadRequest("requests_total must be a counter (>= 0)")
        ipv4, ipv6 = (optional_ip(body, key, v) for key, v in (("ipv4", 4), ("ipv6", 6)))
        if not last_error:
            # Before the store: once `edge status` shows the node current, this is counted.
            await run(metrics.node_reported, node_id, revision)
        made = await run(store.report_node, node_id, region, revision, healthy, conv, last_error,
                         url, requests_total, ipv4, ipv6)
        if made is not None:  # the node joined or moved: a new snapshot for every node
            await publish(made)
        await watch.reported(node_id, revision, last_error)
        return JSONResponse({"ok": True, "revision": feed.revision})

    async def node_traffic(request: Request) -> Response:
        """A node's request counters per function and version (node token), for the live view.

        Body: {"node_id", "region", "started_unix": when the node process started,
        "series": [{"function": "TENANT/NAME", "version": str, "buckets": [counts]}]}, counters
        since the node started, one count per latency bucket of /metrics plus one for slower.
        Kept in memory only; nodes send it every second while they serve requests."""
        await node(request)
        traffic.add(parse_report(await json_body(request)))
        return JSONResponse({"ok": True})

    async def traffic_view(request: Request) -> Response:
        """Requests per second, p50 and p99 per function and region, over the last few seconds
        (scope read; only this tenant's functions).

        Query: function=NAME (optional: only that function; 404 if the tenant has none so
        named). Rows come from nodes' traffic reports; `window_s` says how far back they look."""
        tenant_id, p = await tenant(request, "read")
        view = traffic.view(str(p.tenant))
        only = request.query_params.get("function")
        if only is not None:
            if not NAME_RE.match(only):
                raise BadRequest(f"bad function name {only!r}")
            if only not in await run(store.function_names, tenant_id):
                raise NotFound(f"no function {only!r}")
            for key in ("regions", "functions"):
                view[key] = [row for row in view[key] if row["function"] == only]
        return JSONResponse(view)

    async def public_key(request: Request) -> Response:
        """The Ed25519 key nodes verify snapshots with (any token)."""
        await authenticate(request)
        return JSONResponse(
            {"algorithm": "ed25519", "public_key": signer.public_key.hex(),
             "key_id": signer.key_id}
        )

    # --- regions (operator state) ---------------------------------------------------------------

    async def regions(request: Request) -> Response:
        """Every region: location, weight, drain state and share now, node health and traffic
        (read scope, or a node token: the DNS server follows drains and weights through this).

        A region is listed if it is configured or a node reports from it. `healthy_nodes`
        counts nodes reporting healthy within the staleness window; `stale_nodes` those that
        stopped reporting; `requests_per_s` sums what fresh nodes report (null: none does).
        `endpoints`: every node with a URL, its DNS addresses (`ipv4`, `ipv6`, null: none) and
        whether it is `stale`; the DNS server builds its region map from them.
        `check_up`/`check_down` count nodes by the control plane's own /healthz checks;
        `up_nodes` those healthy by their report and up by the check (unchecked: fresh)."""
        p = await authenticate(request)
        if p.kind == "api" and "read" not in p.scopes:
            raise Forbidden("this token lacks the 'read' scope")

        views = check_views()

        def read() -> dict[str, Any]:
            now = store.now()
            return {
                "now_unix": now,
                "revision": store.revision(),
                "regions": regions_json(
                    store.regions(), store.nodes(), now, settings.node_stale_after_s, views
                ),
            }

        return JSONResponse(await run(read))

    async def region_set(request: Request) -> Response:
        """Create or update a region's location and weight (operate scope).

        Body: {"latitude": number, "longitude": number, "weight": 0..100 (optional: keep)}.
        One revision; nodes get it in their next snapshot."""
        _, p = await tenant(request, "operate")
        name = region_name(request)
        body = await json_body(request)
        lat, lon = number(body, "latitude"), number(body, "longitude")
        weight = optional_int(body, "weight")
        change = await run(store.set_region, name, lat, lon, weight, p.label)
        return await region_changed(change)

    async def region_change(request: Request) -> Response:
        """Drain or undrain a region over `over_s` seconds (operate scope).

        Body: {"over_s": number}; drain defaults to 300 s, undrain to 0 (at once)."""
        _, p = await tenant(request, "operate")
        name = region_name(request)
        action = str(request.path_params["action"])
        if action not in ("drain", "undrain"):
            raise NotFound(f"no such region action {action!r}")
        body = await json_body(request)
        over_s = body.get("over_s")
        if over_s is None:
            over_s = 300.0 if action == "drain" else 0.0
        if isinstance(over_s, bool) or not isinstance(over_s, int | float):
            raise BadRequest("over_s must be a number of seconds")
        if not 0 <= over_s <= MAX_OVER_S:
            raise BadRequest(f"over_s must be between 0 and {MAX_OVER_S:g}")
        change = await run(store.set_region_drain, name, action, float(over_s), p.label)
        return await region_changed(change)

    def region_name(request: Request) -> str:
        name = str(request.path_params["name"])
        if not REGION_RE.match(name):
            raise BadRequest(f"bad region name {name!r} (lowercase letters, digits and -)")
        return name

    async def region_changed(change: RegionChange) -> JSONResponse:
        await publish(change.revision)
        now = store.now()
        r = change.region
        return JSONResponse({
            "revision": change.revision, "changed": change.changed, **r.state_json(),
            "state": r.state(now), "share": round(r.share(now), 4),
        })  # fmt: skip

    async def forget_node(request: Request) -> Response:
        """Remove a node that is gone for good (admin scope): its row, so status, regions,
        metrics and the dashboard stop listing it, and its endpoint, in a "node" revision.

        Only a node that stopped reporting (stale) and that the control plane's check does not
        see up: any other answers 409 node_alive. A forgotten node that reports again simply
        joins again."""
        p = await require_admin(authenticate, request)
        node_id = str(request.path_params["id"])
        if check_views().get(node_id, UNCHECKED)["check"] == "up":
            raise NodeAlive(f"node {node_id!r} passes the control plane's health check")
        gone, revision = await run(
            store.forget_node, node_id, settings.node_stale_after_s, p.label
        )
        await publish(revision)
        watch.forget(node_id)
        return JSONResponse({"revision": revision, "forgotten": node_json(
            gone, revision, now(), settings.node_stale_after_s)})

    async def to_dashboard(_: Request) -> Response:
        """The operator dashboard (a static page that asks for a token)."""
        return RedirectResponse("/dashboard/")

    async def openapi(request: Request) -> Response:
        """This API's description (any token)."""
        await authenticate(request)
        return JSONResponse(openapi_schema(routes))

    async def metrics_page(_: Request) -> Response:
        return Response(await run(metrics.exposition), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        """Liveness for a load balancer or supervisor (no token, like /metrics): the database
        answers. 503 when it does not."""
        try:
            revision = await run(store.revision)
        except (sqlite3.Error, RuntimeError, EdgeError) as e:  # RuntimeError: store closed
            return JSONResponse({"ok": False, "error": str(e)}, status_code=503)
        return JSONResponse({"ok": True, "revision": revision})

    async def on_edge_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, EdgeError)
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": reason, "message": exc.detail}, status_code=exc.status_code)

    async def on_crash(request: Request, exc: Exception) -> Response:
        return closing_if_body(request, error_response(EdgeError("internal error")))

    f = "/v1/functions/{name}"
    routes: list[BaseRoute] = [
        Route("/v1/functions", list_functions, methods=["GET"]),
        Route(f, delete_function, methods=["DELETE"]),
        Route(f + "/versions", upload_version, methods=["POST"]),
        Route(f + "/versions", list_versions, methods=["GET"]),
        Route(f + "/deploy", deploy, methods=["POST"]),
        Route(f + "/canary", canary, methods=["POST"]),
        Route(f + "/promote", promote, methods=["POST"]),
        Route(f + "/rollback", rollback, methods=["POST"]),
        Route("/v1/status", status, methods=["GET"]),
        Route("/v1/node/snapshot", node_snapshot, methods=["GET"]),
        Route("/v1/node/report", node_report, methods=["POST"]),
        Route("/v1/node/traffic", node_traffic, methods=["POST"]),
        Route("/v1/traffic", traffic_view, methods=["GET"]),
        Route("/v1/blobs/{sha256}", blob, methods=["GET"]),
        Route("/v1/public-key", public_key, methods=["GET"]),
        Route("/v1/regions", regions, methods=["GET"]),
        Route("/v1/regions/{name}", region_set, methods=["PUT"]),
        Route("/v1/regions/{name}/{action}", region_change, methods=["POST"]),
        Route("/v1/nodes/{id}", forget_node, methods=["DELETE"]),
        *admin_routes(store, authenticate, KeyRotation(store, secrets_key_file), publish),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/", to_dashboard, methods=["GET"]),
        Mount("/dashboard", Dashboard()),
    ]
    routes += log_routes(store, logs, tenant, node, json_body, run, function_name, now)
    routes += config_routes(store, tenant, json_body, run, function_name, publish)
    # Not in `routes`: the OpenAPI description is of the token-protected API.
    served = [*routes, Route("/metrics", metrics_page, methods=["GET"]),
              Route("/healthz", healthz, methods=["GET"])]
    return Starlette(
        routes=served,
        lifespan=lifespan,
        middleware=[Middleware(metrics.middleware(served)), Middleware(close_unread_bodies)],
        exception_handlers={
            EdgeError: on_edge_error, HTTPException: on_http_error, Exception: on_crash,
        },
    )


def _metadata(request: Request, settings: ControlSettings) -> tuple[dict[str, Any], str]:
    raw = request.headers.get(METADATA_HEADER, "")
    if len(raw) > settings.max_metadata_bytes:
        raise PayloadTooLarge(f"Edge-Metadata is over {settings.max_metadata_bytes} bytes")
    return decode_metadata(raw)


def openapi_schema(routes: list[BaseRoute]) -> dict[str, Any]:
    """OpenAPI 3 from the routes and their docstrings (first line: summary; rest: description).
    Written by hand because Starlette's generator wants YAML in docstrings."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        doc = (route.endpoint.__doc__ or "").strip()
        summary, _, rest = doc.partition("\n\n")
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(route.path, {})[method.lower()] = {
                "summary": " ".join(summary.split()),
                "description": " ".join(rest.split()),
                "security": [{"bearer": []}],
                "responses": {"200": {"description": "OK"}},
            }
    return {
        "openapi": "3.0.0",
        "info": {"title": "edge control plane", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }
