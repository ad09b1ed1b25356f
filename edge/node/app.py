"""The edge node's ASGI application: route, run the function in the sandbox, answer.

Function requests take a plain ASGI path (no middleware stack: it costs more than a small
function's run); `/healthz` and `/readyz` are a small Starlette app. Cheap functions run inline
under a short budget and everything else on worker threads (see `inline`): wasmtime releases
the GIL inside calls, so a function busy for a long time never delays other requests.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any

import anyio
import httpx
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge.errors import EdgeError, FunctionError, NoRoute
from edge.node import http
from edge.node.client_ip import client_ip
from edge.node.geo import NO_GEO
from edge.node.inline import InlineHint
from edge.node.runtime import NodeRuntime, Unavailable
from edge.node.spill import SPILLED_FROM, spill_decision
from edge.sandbox.abi import GuestRequest, GuestResponse
from edge.sandbox.function import LoadedFunction, OverBudget
from edge.sandbox.host import Invocation, LogLine, LogSink

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

INLINE_BUDGET_TICKS = 2
# A spill target that does not accept the connection at once is skipped and the request served
# here; one that accepted gets as long as a slow function may take.
SPILL_TIMEOUT = httpx.Timeout(30.0, connect=1.0, pool=1.0)
SPILL_AVOID_S = 5.0  # how long a target that failed is left out
OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
SPILLED_FROM_B = SPILLED_FROM.encode()


class _LogBuffer:
    """Holds an inline attempt's log lines until it is known to count; then passes them on
    (lines that guest stdio delivers later go straight through), or drops them."""

    def __init__(self, sink: LogSink) -> None:
        self.sink = sink
        self.lines: list[LogLine] | None = []

    def __call__(self, line: LogLine) -> None:
        if self.lines is None:
            self.sink(line)
        else:
            self.lines.append(line)

    def commit(self) -> None:
        lines, self.lines = self.lines or [], None
        for line in lines:
            self.sink(line)

    def discard(self) -> None:
        self.lines = []


def ops_app(runtime: NodeRuntime) -> Starlette:
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

    async def metrics(_: Request) -> Response:
        m = runtime.metrics
        m.cache.labels("hit").set(runtime.cache.stats.hits)
        m.cache.labels("miss").set(runtime.cache.stats.misses)
        if runtime.deployment.revision is not None:
            m.revision.set(runtime.deployment.revision)
        return Response(m.exposition(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/readyz", readyz, methods=["GET", "HEAD"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


class FunctionServer:
    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.limiter = anyio.CapacityLimiter(runtime.config.workers)
        self.hints: weakref.WeakKeyDictionary[LoadedFunction, InlineHint] = (
            weakref.WeakKeyDictionary()
        )
        self.http: httpx.AsyncClient | None = None
        self.failed_targets: dict[str, float] = {}  # spill URL -> monotonic time it failed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        request_id = http.request_id_from(headers)
        metrics = self.runtime.metrics
        metrics.in_flight_now += 1
        try:
            response = await self._serve(scope, receive, headers, request_id)
        except EdgeError as e:
            response = http.error_parts(e, request_id)
        finally:
            metrics.in_flight_now -= 1
        status, raw_headers, body = response
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})

    async def _serve(
        self, scope: Scope, receive: Receive, headers: list[tuple[bytes, bytes]], request_id: str
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        runtime, config = self.runtime, self.config
        deployment = runtime.deployment  # one snapshot for the whole request
        host = http.header(headers, b"host")
        path: str = scope["path"]
        route = deployment.routes.match(host, path)
        if route is None:
            raise NoRoute(f"no function is routed at {host}{path}")
        served = deployment.functions.get(route.function)
        if served is None:
            raise NoRoute(f"function {route.function!r} is not loaded yet")
        client = scope.get("client")
        peer = client[0] if client else "0.0.0.0"
        forwarded = http.header_all(headers, b"x-forwarded-for")
        ip = client_ip(peer, forwarded, config.trusted_proxies) if forwarded else peer
        cookies: dict[str, str] = {}
        if served.canary is not None and served.sticky.startswith("cookie:"):
            jar = SimpleCookie(http.header(headers, b"cookie"))
            cookies = {k: m.value for k, m in jar.items()}
        function, version = served.pick(route.function, ip, cookies)
        if isinstance(function, Unavailable):
            raise function.error
        limits = function.config.limits
        body = await http.read_body(
            receive, headers, limits.request_body_limit_bytes, scope.get("http_version", "1.1")
        )
        spill = None
        if config.region in deployment.topology.regions:  # else nothing can drain: no spill
            spill = spill_decision(
                deployment.topology, config.region, config.advertised_url, time.time(), ip,
                already_spilled=bool(http.header(headers, SPILLED_FROM_B)),
                avoid=self._avoided(),
            )  # fmt: skip
        if spill is not None:
            answer = await self._forward(spill.url, scope, headers, body, request_id, ip)
            if answer is not None:
                runtime.metrics.spills.labels(spill.region).inc()
                return answer
            self.failed_targets[spill.url] = time.monotonic()
        guest_request = GuestRequest(
            method=scope["method"],
            url=http.url_of(scope, host),
            headers=http.guest_headers(headers, request_id),
            body=body,
            client_ip=ip,
            region=config.region,
            node_id=config.node_id,
            request_id=request_id,
            geo=runtime.geo.lookup(ip) if runtime.geo else NO_GEO,
        )
        metrics = runtime.metrics.function(route.function, version)
        started = time.perf_counter()
        try:
            result = await self._run(function, guest_request, request_id)
            out_headers = http.response_headers(result.headers, request_id)
        except FunctionError as e:
            # The function's author needs this line: it is the platform's word on their code.
            runtime.sink(
                LogLine(function.name, request_id, "error", e.message, "platform", time.time())
            )
            metrics.error(e.reason)
            metrics.request(e.status, len(body), 0)
            raise
        finally:
            metrics.latency.observe(time.perf_counter() - started)
        metrics.request(result.status, len(body), len(result.body))
        if version:
            out_headers.append((b"x-edge-version", f"{route.function}@{version}".encode()))
        out_headers.append((b"x-edge-region", config.region.encode()))
        out_body = b"" if scope["method"] == "HEAD" else result.body
        out_headers.append((b"content-length", str(len(out_body)).encode()))
        return result.status, out_headers, out_body

    async def _forward(
        self,
        target: str,
        scope: Scope,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        request_id: str,
        ip: str,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """Sends the request on to a node of the next region (L7 spill). None when that fails:
        the request is then served here, so a spill never turns into an error."""
        if self.http is None:
            self.http = httpx.AsyncClient(timeout=SPILL_TIMEOUT, trust_env=False)
        out = [
            (k, v)
            for k, v in headers
            if k.decode("latin-1") not in http.HOP_BY_HOP and k not in (b"x-forwarded-for",)
        ]
        # The next node must see the same client: we are the proxy it trusts or not; either
        # way the spilled-from header stops a second hop.
        out += [
            (SPILLED_FROM.encode(), self.config.region.encode()),
            (b"x-forwarded-for", ip.encode()),
            (b"x-request-id", request_id.encode()),
        ]
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        url = target + path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        try:
            r = await self.http.request(scope["method"], url, headers=out, content=body)
        except httpx.HTTPError:
            return None
        raw = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in r.headers.multi_items()
            if k.lower() not in http.HOP_BY_HOP
        ]
        raw.append((b"content-length", str(len(r.content)).encode()))
        return r.status_code, raw, r.content

    def _avoided(self) -> frozenset[str]:
        if not self.failed_targets:
            return frozenset()
        now = time.monotonic()
        self.failed_targets = {
            u: t for u, t in self.failed_targets.items() if now - t < SPILL_AVOID_S
        }
        return frozenset(self.failed_targets)

    async def _run(
        self, function: LoadedFunction, request: GuestRequest, request_id: str
    ) -> GuestResponse:
        sink = self.runtime.sink
        config = function.config.config
        hint = self.hints.get(function)
        if hint is None:
            hint = self.hints[function] = InlineHint()
        if hint.eligible():
            buffer = _LogBuffer(sink)
            invocation = Invocation(function.name, request_id, config, buffer)
            # CPU time of this thread, not wall time: on a busy machine the loop's thread can be
            # descheduled mid-run, and that says nothing about what the function costs.
            started = time.thread_time()
            try:
                result = function.invoke(request, invocation, INLINE_BUDGET_TICKS)
            except OverBudget:
                buffer.discard()
                hint.record(time.thread_time() - started, finished=False)
            except BaseException:
                buffer.commit()
                hint.record(time.thread_time() - started, finished=True)
                raise
            else:
                buffer.commit()
                hint.record(time.thread_time() - started, finished=True)
                return result
        invocation = Invocation(function.name, request_id, config, sink)
        return await anyio.to_thread.run_sync(
            function.invoke, request, invocation, limiter=self.limiter
        )


def create_app(runtime: NodeRuntime) -> ASGIApp:
    ops = ops_app(runtime)
    functions = FunctionServer(runtime)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPS_PATHS:
            await functions(scope, receive, send)
        else:
            await ops(scope, receive, send)

    return app
