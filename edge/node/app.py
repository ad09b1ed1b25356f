"""The edge node's ASGI application: route, run the function in the sandbox, answer.

Wasm runs on worker threads (wasmtime releases the GIL inside calls), so a function that is
busy for a long time never delays other requests on the event loop.
"""

from __future__ import annotations

import time

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge.errors import EdgeError, FunctionError, NoRoute
from edge.node import http
from edge.node.client_ip import client_ip
from edge.node.geo import NO_GEO
from edge.node.runtime import NodeRuntime, Unavailable
from edge.sandbox.abi import GuestRequest
from edge.sandbox.host import Invocation, LogLine

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


def create_app(runtime: NodeRuntime) -> Starlette:
    limiter = anyio.CapacityLimiter(runtime.config.workers)
    config = runtime.config

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok", "node": config.node_id, "region": config.region})

    async def readyz(_: Request) -> Response:
        deployment = runtime.deployment
        waiting = sorted(
            name for name in deployment.routes.functions() if name not in deployment.functions
        )
        ready = deployment.ready and not waiting
        unavailable = sorted(
            n
            for n, served in deployment.functions.items()
            if any(isinstance(f, Unavailable) for f in served.loaded())
        )
        return JSONResponse(
            {
                "ready": ready,
                "waiting": waiting,
                "unavailable": unavailable,
                "revision": deployment.revision,
            },
            status_code=200 if ready else 503,
        )

    async def serve(request: Request) -> Response:
        request_id = http.request_id_for(request)
        try:
            return await _serve(request, request_id)
        except EdgeError as e:
            return http.error_response(e, request_id)

    async def _serve(request: Request, request_id: str) -> Response:
        deployment = runtime.deployment  # one snapshot for the whole request
        route = deployment.routes.match(request.headers.get("host", ""), request.url.path)
        if route is None:
            raise NoRoute(f"no function is routed at {request.url.netloc}{request.url.path}")
        served = deployment.functions.get(route.function)
        if served is None:
            raise NoRoute(f"function {route.function!r} is not loaded yet")
        peer = request.client.host if request.client else "0.0.0.0"
        ip = client_ip(peer, request.headers.getlist("x-forwarded-for"), config.trusted_proxies)
        function, version = served.pick(route.function, ip, request.cookies)
        if isinstance(function, Unavailable):
            raise function.error
        limits = function.config.limits
        body = await http.read_body(request, limits.request_body_limit_bytes)
        guest_request = GuestRequest(
            method=request.method,
            url=str(request.url),
            headers=http.guest_headers(request, request_id),
            body=body,
            client_ip=ip,
            region=config.region,
            node_id=config.node_id,
            request_id=request_id,
            geo=runtime.geo.lookup(ip) if runtime.geo else NO_GEO,
        )
        invocation = Invocation(function.name, request_id, function.config.config, runtime.sink)
        try:
            result = await anyio.to_thread.run_sync(
                function.invoke, guest_request, invocation, limiter=limiter
            )
            headers = http.response_headers(result.headers, request_id)
        except FunctionError as e:
            # The function's author needs this line: it is the platform's word on their code.
            runtime.sink(
                LogLine(function.name, request_id, "error", e.message, "platform", time.time())
            )
            raise
        if version:
            headers.append((b"x-edge-version", f"{route.function}@{version}".encode()))
        body_out = b"" if request.method == "HEAD" else result.body
        return http.RawResponse(result.status, body_out, headers)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/readyz", readyz, methods=["GET", "HEAD"]),
            Route("/{path:path}", serve, methods=ALL_METHODS),
        ]
    )
