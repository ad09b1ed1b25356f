"""Tenants, tokens and the secrets key's online rotation over HTTP, for a token with the
"admin" scope (the operator's; the token made at first start has it).

A token's secret is in the answer that creates it and nowhere else: the store keeps its
sha256. A revoked token stays listed and answers 401 from the next request on. Any other token
gets 403 here, whatever it asks about, so these routes reveal nothing to tenants.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge.control.bodies import field, json_body, number
from edge.control.errors import Forbidden, NotFound
from edge.control.records import ADMIN_SCOPE, TOKEN_SCOPES, Principal
from edge.control.rotation import KeyRotation
from edge.control.store import Store
from edge.errors import BadRequest

T = TypeVar("T")
TOKEN_ID_RE = re.compile(r"[0-9]{1,18}")
MAX_EXPIRES_IN_S = 10 * 365 * 86_400
Authenticate = Callable[[Request], Awaitable[Principal]]


async def require_admin(authenticate: Authenticate, request: Request) -> Principal:
    p = await authenticate(request)
    if p.kind != "api" or ADMIN_SCOPE not in p.scopes:
        raise Forbidden("this token lacks the 'admin' scope")
    return p


def admin_routes(
    store: Store, authenticate: Authenticate, rotation: KeyRotation,
    publish: Callable[[int], Awaitable[None]],
) -> list[Route]:
    def run(fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        return anyio.to_thread.run_sync(fn, *args)

    async def admin(request: Request) -> Principal:
        return await require_admin(authenticate, request)

    async def create_tenant(request: Request) -> Response:
        """Create a tenant (admin scope). Body: {"name": str}. Answers 201, 409 if it exists."""
        await admin(request)
        name = field(await json_body(request), "name", str)
        await run(store.create_tenant, name)
        tenant = next(t for t in await run(store.tenants) if t.name == name)
        return JSONResponse(tenant.to_json(), status_code=201)

    async def list_tenants(request: Request) -> Response:
        """Every tenant, with its number of functions and of unrevoked tokens (admin scope).

        `functions` counts the deployed ones (what `GET /v1/status` lists);
        `functions_with_versions` every one with an uploaded version, deleted ones included."""
        await admin(request)
        return JSONResponse({"tenants": [t.to_json() for t in await run(store.tenants)]})

    async def create_token(request: Request) -> Response:
        """Create a token (admin scope); its secret is in this answer only.

        Body: {"tenant": str, "scopes": ["deploy" | "operate" | "read" | "admin", ...],
        "name": str (optional)} for an API token, or {"kind": "node", "name": str (optional)}
        for a node token (no tenant, no scopes); either may add "expires_in_s": seconds until
        it gets 401 "token expired" (default: never). Answers 201 with the listing fields and
        "token"."""
        p = await admin(request)
        body = await json_body(request)
        kind = field(body, "kind", str, "api")
        name = field(body, "name", str, "")
        expires_in_s = None
        if body.get("expires_in_s") is not None:
            expires_in_s = number(body, "expires_in_s")
            if not 0 < expires_in_s <= MAX_EXPIRES_IN_S:
                raise BadRequest(f"expires_in_s must be above 0 and at most {MAX_EXPIRES_IN_S}"
                                 f" (ten years), got {expires_in_s:g}")
        if kind == "node":
            tenant, scopes = None, []
        else:
            tenant = field(body, "tenant", str)
            scopes = field(body, "scopes", list)
            if not scopes or not all(isinstance(s, str) for s in scopes):
                raise BadRequest(f"scopes must be a non-empty list of {', '.join(TOKEN_SCOPES)}")
        label = name or f"{tenant or 'node'} by {p.label}"
        info, secret = await run(
            lambda: store.issue_token(tenant=tenant, kind=kind, scopes=scopes, label=label,
                                      expires_in_s=expires_in_s)
        )
        return JSONResponse({**info.to_json(), "token": secret}, status_code=201)

    async def list_tokens(request: Request) -> Response:
        """Every token, revoked ones included, without secrets (admin scope). Query:
        tenant=NAME (optional) for one tenant's."""
        await admin(request)
        tenant = request.query_params.get("tenant")
        tokens = await run(store.tokens, tenant)
        return JSONResponse({"tokens": [t.to_json() for t in tokens]})

    async def revoke_token(request: Request) -> Response:
        """Revoke a token by id (admin scope): from the next request on it gets 401."""
        await admin(request)
        raw = str(request.path_params["id"])
        if not TOKEN_ID_RE.fullmatch(raw):  # no such id, rather than past SQLite's range
            raise NotFound(f"no token {raw!r}")
        token_id = int(raw)
        return JSONResponse((await run(store.revoke_token, token_id)).to_json())

    async def rotate_secrets_key(request: Request) -> Response:
        """Seal every secret config value again under a new secrets key, with the control plane
        running (admin scope; edge.control.rotation).

        Body: {"new_key_file": an absolute path on the control plane's machine (a new key is
        made there, 0600, if the file does not exist)}. In one transaction every secret,
        current and in the revision log, is sealed again under it, and each function with a
        secret gets a "config" revision; every later seal is under it, and it is written over
        the control plane's key file (the old key kept in "<key file>.previous"), so a restart
        keeps it. Nodes need it first (previous_secrets_key_file). Answers {"values",
        "functions", "revisions", "old_key_id", "new_key_id", "new_key_file", "key_file",
        "previous_key_file"}; 400 bad_secrets_key (no key there), 409 secrets_key_in_use (the
        current key), 409 rotation_running, each changing nothing."""
        p = await admin(request)
        path = field(await json_body(request), "new_key_file", str)
        if not path or "\0" in path:
            raise BadRequest("new_key_file must be a file's path")
        try:
            done = await run(rotation.rotate, Path(path), p.label)
        finally:
            # Even when the key file could not be written after the commit: nodes must fetch
            # the revisions made under the new key.
            await publish(await run(store.revision))
        return JSONResponse(done.to_json())

    return [
        Route("/v1/secrets-key/rotate", rotate_secrets_key, methods=["POST"]),
        Route("/v1/tenants", create_tenant, methods=["POST"]),
        Route("/v1/tenants", list_tenants, methods=["GET"]),
        Route("/v1/tokens", create_token, methods=["POST"]),
        Route("/v1/tokens", list_tokens, methods=["GET"]),
        Route("/v1/tokens/{id}/revoke", revoke_token, methods=["POST"]),
    ]
