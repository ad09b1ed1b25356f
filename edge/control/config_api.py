"""The deploy-time configuration endpoints (edge.control.values has the rules):

    GET /v1/functions/{name}/config   the function's values (read scope); secrets by name only
    PUT /v1/functions/{name}/config   set or remove values in one revision (deploy scope)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.control.logs_api import JsonBody, Run, TenantAuth
from edge.control.values import MAX_KEYS, MAX_VALUE_BYTES, ConfigValue, parse_change


def values_json(name: str, values: list[ConfigValue] | tuple[ConfigValue, ...]) -> dict[str, Any]:
    return {"function": name, "values": [v.to_json() for v in values],
            "max_keys": MAX_KEYS, "max_value_bytes": MAX_VALUE_BYTES}


def config_routes(
    store: Any,  # edge.control.store.Store
    tenant: TenantAuth,
    json_body: JsonBody,
    run: Run,
    function_name: Callable[[Request], str],
    publish: Callable[[int], Awaitable[None]],
) -> list[BaseRoute]:
    async def get_config(request: Request) -> Response:
        """A function's deploy-time config values, by key (scope read).

        Each: {"key", "secret", "value"}; a secret's value is always null here (and in every
        other answer). A function's config.get sees its version's edge.toml [config] with
        these over it, key by key; "edge_toml" is the stable version's ({"version",
        "config"}; null while the function is not deployed)."""
        tenant_id, _ = await tenant(request, "read")
        name = function_name(request)
        values = await run(store.config_values, tenant_id, name)
        stable = await run(store.stable_config, tenant_id, name)
        edge_toml = None if stable is None else {"version": stable[0], "config": stable[1]}
        return JSONResponse({**values_json(name, values), "edge_toml": edge_toml})

    async def put_config(request: Request) -> Response:
        """Set or remove deploy-time config values, in one revision (scope deploy).

        Body: {"values": {KEY: string, or null to remove}, "secret": [KEY, ...] (optional: keys
        set by this request whose values are never shown)}. Keys not named keep their values.
        Keys: 1-128 letters, digits, '_', '.', '-'; values at most max_value_bytes (UTF-8); at
        most max_keys per function (400 bad_config_key, config_value_too_large,
        too_many_config_keys). Answers {"revision", "changed", "function", "values"}; nodes
        serve the new values without recompiling."""
        tenant_id, p = await tenant(request, "deploy")
        name = function_name(request)
        changes, secret = parse_change(await json_body(request))
        result = await run(store.set_config, tenant_id, name, changes, secret, p.label)
        if result.changed:
            await publish(result.revision)
        return JSONResponse({"revision": result.revision, "changed": result.changed,
                             **values_json(name, result.values)})

    return [
        Route("/v1/functions/{name}/config", get_config, methods=["GET"]),
        Route("/v1/functions/{name}/config", put_config, methods=["PUT"]),
    ]
