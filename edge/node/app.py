"""The edge node's ASGI application: route, run the function in the sandbox, answer.

Function requests take a plain ASGI path (no middleware stack: it costs more than a small
function's run); `/healthz` and `/readyz` are a small Starlette app. Cheap functions run inline
under a short budget and everything else on worker threads (see `inline`): wasmtime releases
the GIL inside calls, so a function busy for a long time never delays other requests.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping

import anyio
import httpx
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge.asgi import ASGIApp, Message, Receive, Scope, Send
from edge.errors import EdgeError, FunctionError, FunctionOverloaded, MethodNotAllowed, NoRoute
from edge.node import http
from edge.node.admission import Admission
from edge.node.client_ip import client_ip
from edge.node.fairshare import FairShare, default_per_function
from edge.node.geo import NO_GEO
from edge.node.inline import InlineHint, collections
from edge.node.metrics import FunctionSeries
from edge.node.runtime import NodeRuntime, Unavailable
from edge.node.spill import SPILLED_FROM, Spill, spill_decision
from edge.node.tracecontext import TRACEPARENT, TRACESTATE, new_span_id
from edge.node.tracing import RequestTrace
from edge.sandbox.abi import GuestRequest, GuestResponse
from edge.sandbox.engine import lower_this_thread
from edge.sandbox.function import LoadedFunction, OverBudget
from edge.sandbox.host import Invocation, LogLine, LogSink

INLINE_BUDGET_TICKS = 2
# A spill target that does not accept the connection at once is skipped and the request served
# here; one that accepted gets as long as a slow function may take.
SPILL_TIMEOUT = httpx.Timeout(30.0, connect=1.0, pool=1.0)
SPILL_AVOID_S = 5.0  # how long a target that failed is left out
SPILLED_FROM_B = SPILLED_FROM.encode()
OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
REQUEST_ID_KEY = "edge.request_id"  # where an ops request's id waits in the ASGI scope
# Replaced on a forward: framing, the client address and the caller's trace context.
_NOT_FORWARDED = frozenset(
    [h.encode() for h in http.HOP_BY_HOP] + [b"x-forwarded-for", TRACEPARENT, TRACESTATE]
)


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
        secrets = runtime.secrets
        # The keys secrets open with, and why new key files were not taken (the node serves on
        # with the keys it had), when following a control plane.
        keys = {} if secrets is None else {
            "secrets_keys": {"key_ids": secrets.keyring.key_ids, "error": secrets.error}
        }
        return JSONResponse(
            {
                **keys,
                "ready": ready,
                "waiting": waiting,
                "unavailable": unavailable,
                "revision": deployment.revision,
                # Function -> version -> the compiler its requests run on ("winch" until a
                # tier-up to "cranelift", see sandbox.tiering).
                "tiers": {n: served.tiers() for n, served in sorted(deployment.functions.items())},
                # "native", or "python" with why when the native one could not be had.
                "epoch_ticker": runtime.engine.ticker_summary,
                "invoke": runtime.engine.invoke_summary,
                "workers": runtime.engine.workers_summary,
                "wire": runtime.engine.wire_summary,
            },
            status_code=200 if ready else 503,
        )

    async def metrics(_: Request) -> Response:
        return Response(runtime.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def refused(request: Request, exc: Exception) -> Response:
        # Only a method can be wrong: the node sends nothing but these exact paths here.
        assert isinstance(exc, HTTPException)
        error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        status, raw, body = http.error_parts(error, request.scope[REQUEST_ID_KEY])
        if http.declares_body(request.scope["headers"]):  # unread: see http.declares_body
            raw.append(http.CLOSE)
        headers = {k.decode(): v.decode() for k, v in raw} | dict(exc.headers or {})
        return Response(body, status, headers)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/readyz", readyz, methods=["GET", "HEAD"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={HTTPException: refused},
    )


class FunctionServer:
    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime
        self.config = runtime.config
        cfg = runtime.config
        self.limiter = anyio.CapacityLimiter(cfg.workers)
        self.worker_nice = cfg.sandbox.worker_nice
        share = cfg.function_workers or default_per_function(
            cfg.workers, len(os.sched_getaffinity(0))
        )
        # One share per pool of threads: the Python workers and the native ones (C functions),
        # where fast functions are not held to it (fairshare: waiting costs them more).
        self.threads, self.natives = (
            Admission(FairShare(cfg.workers, share, cfg.queue_length, exempt_fast),
                      cfg.queue_timeout_ms / 1000)
            for exempt_fast in (False, True)
        )  # fmt: skip
        runtime.metrics.queued = lambda: self.threads.share.queued + self.natives.share.queued
        runtime.stop_waiting = self.stop_waiting
        self.hints: weakref.WeakKeyDictionary[LoadedFunction, InlineHint] = (
            weakref.WeakKeyDictionary()
        )
        self.http: httpx.AsyncClient | None = None
        self.failed_targets: dict[str, float] = {}  # spill URL -> monotonic time it failed

    def stop_waiting(self) -> None:
        self.threads.stop()
        self.natives.stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        request_id = http.request_id_from(headers)
        exporter = self.runtime.spans
        traceparent = http.header(headers, TRACEPARENT)
        trace = RequestTrace.start(
            traceparent, http.header(headers, TRACESTATE) if traceparent else "",
            exporter is not None,
        )  # fmt: skip
        metrics = self.runtime.metrics
        metrics.in_flight += 1
        error = ""
        try:
            response = await self._serve(scope, receive, headers, request_id, trace)
        except EdgeError as e:
            response = http.error_parts(e, request_id)
            error = e.reason
            # Only a function's errors (and a refusal for overload) come after the whole body
            # was read; any other left it unread (or stopped reading it), and the server will
            # close the connection.
            if not isinstance(e, FunctionError | FunctionOverloaded) and http.declares_body(
                headers
            ):
                response[1].append(http.CLOSE)
        finally:
            metrics.in_flight -= 1
        status, raw_headers, body = response
        # The caller can find this request's trace (and this node's span) from the answer.
        raw_headers.append((TRACEPARENT, trace.traceparent().encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})
        if trace.spans is not None and exporter is not None:
            exporter.export(trace.trace_id, trace.flags, bool(trace.parent_id),
                            trace.finish(status, error))  # fmt: skip

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        headers: list[tuple[bytes, bytes]],
        request_id: str,
        trace: RequestTrace,
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
            cookies = http.cookies(headers)
        function, version = served.pick(route.function, ip, cookies)
        trace.note("edge.function", route.function)
        trace.note("edge.version", version)
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
            answer = await self._forward(spill, scope, headers, body, request_id, ip, trace)
            if answer is not None:
                return answer
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
        series = runtime.metrics.series(route.function, version)
        series.bytes_in += len(body)
        started = time.perf_counter()
        try:
            result = await self._run(
                function, served.config_of(function), guest_request, route.function, version,
                request_id, trace, series,
            )  # fmt: skip
            out_headers = http.response_headers(result.headers, request_id)
        except (FunctionError, FunctionOverloaded) as e:
            if isinstance(e, FunctionOverloaded):  # it did not run: another region may run it
                spill = spill_decision(
                    deployment.topology, config.region, config.advertised_url, time.time(), ip,
                    already_spilled=bool(http.header(headers, SPILLED_FROM_B)),
                    avoid=self._avoided(), overflow=True,
                )  # fmt: skip
                if spill is not None:
                    answer = await self._forward(spill, scope, headers, body, request_id, ip, trace)
                    if answer is not None:  # served elsewhere: counted there, not here
                        return answer
            series.latency.observe(time.perf_counter() - started)
            # The function's author needs this line: it is the platform's word on their code.
            runtime.sink(LogLine(route.function, request_id, "error", e.message, "platform",
                                 time.time(), version, trace.trace_id))  # fmt: skip
            series.failed(e)
            raise
        except BaseException:
            series.latency.observe(time.perf_counter() - started)
            raise
        series.latency.observe(time.perf_counter() - started)
        series.answered(result.status)
        series.bytes_out += len(result.body)
        if version:
            out_headers.append((b"x-edge-version", f"{route.function}@{version}".encode()))
        out_headers.append((b"x-edge-region", config.region.encode()))
        return result.status, out_headers, http.framed(
            scope["method"], result.status, result.body, out_headers
        )

    async def _forward(
        self,
        spill: Spill,
        scope: Scope,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        request_id: str,
        ip: str,
        trace: RequestTrace,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """Sends the request on to a node of the next region (L7 spill), counted. None when
        that fails (the target is then avoided for a while): the request is then served here
        (or refused), so a spill never turns into an error of its own."""
        if self.http is None:
            self.http = httpx.AsyncClient(timeout=SPILL_TIMEOUT, trust_env=False)
        out = [(k, v) for k, v in headers if k not in _NOT_FORWARDED]
        # The next node must see the same client: we are the proxy it trusts or not; either
        # way the spilled-from header stops a second hop. Its span hangs under the forward.
        span_id = new_span_id()
        out += [
            (SPILLED_FROM.encode(), self.config.region.encode()),
            (b"x-forwarded-for", ip.encode()),
            (b"x-request-id", request_id.encode()),
            (TRACEPARENT, trace.traceparent(span_id).encode()),
        ]
        if trace.tracestate:
            out.append((TRACESTATE, trace.tracestate.encode()))
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        url = spill.url + path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        started = time.time_ns()
        try:
            r = await self.http.request(scope["method"], url, headers=out, content=body)
        except httpx.HTTPError as e:
            trace.add("forward", started, time.time_ns(), span_id=span_id, kind="client",
                      attributes={"edge.spill.region": spill.region, "url.full": url},
                      error=type(e).__name__)  # fmt: skip
            self.failed_targets[spill.url] = time.monotonic()
            return None
        self.runtime.metrics.spills.labels(spill.region).inc()
        trace.add("forward", started, time.time_ns(), span_id=span_id, kind="client",
                  attributes={"edge.spill.region": spill.region, "url.full": url,
                              "http.response.status_code": r.status_code})  # fmt: skip
        raw = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in r.headers.multi_items()
            if k.lower() not in http.HOP_BY_HOP and k.lower() != "traceparent"
        ]
        return r.status_code, raw, http.framed(scope["method"], r.status_code, r.content, raw)

    def _avoided(self) -> frozenset[str]:
        if not self.failed_targets:
            return frozenset()
        now = time.monotonic()
        self.failed_targets = {
            u: t for u, t in self.failed_targets.items() if now - t < SPILL_AVOID_S
        }
        return frozenset(self.failed_targets)

    async def _run(
        self,
        function: LoadedFunction,
        config: Mapping[str, str],
        request: GuestRequest,
        key: str,
        version: str,
        request_id: str,
        trace: RequestTrace,
        series: FunctionSeries,
    ) -> GuestResponse:
        """Runs the function; `key` is its routed name ("tenant/name" on a follower), which
        its log lines carry so the control plane can file them."""
        sink = self.runtime.sink
        recorded = trace.spans is not None
        pooled = function.pooled(config)  # None unless it runs on the native path (C)
        pool = self.runtime.engine.native_pool() if pooled is not None else None
        if pooled is not None and pool is not None:
            invocation = Invocation(key, request_id, config, sink, version=version,
                                    trace_id=trace.trace_id, marks=[] if recorded else None)
            natives = self.natives
            ticket = natives.enter(key) or await natives.wait(key)
            try:  # the pool keeps the epoch ticker awake while the job runs
                try:  # the worker is the function's until the job ends, given up or not
                    job = pool.run(pooled, request, (natives.leave, ticket))
                except BaseException:
                    natives.leave(ticket, 0.0)
                    raise
                return function.native_finish(await job, invocation)
            finally:
                _instantiated(invocation, series)
                _finish(trace, invocation)
        hint = self.hints.get(function)
        if hint is None:
            hint = self.hints[function] = InlineHint()
        if hint.eligible():
            buffer = _LogBuffer(sink)
            invocation = Invocation(key, request_id, config, buffer, version=version,
                                    trace_id=trace.trace_id, marks=[] if recorded else None)
            # CPU time of this thread, not wall time: on a busy machine the loop's thread can be
            # descheduled mid-run, and that says nothing about what the function costs.
            started, gcs = time.thread_time(), collections()
            try:
                result = function.invoke(request, invocation, INLINE_BUDGET_TICKS)
            except OverBudget:
                _instantiated(invocation, series)
                buffer.discard()
                hint.record(time.thread_time() - started, False, collections() != gcs)
            except BaseException:
                buffer.commit()
                hint.record(time.thread_time() - started, True, collections() != gcs)
                _instantiated(invocation, series)
                _finish(trace, invocation)
                raise
            else:
                buffer.commit()
                hint.record(time.thread_time() - started, True, collections() != gcs)
                _instantiated(invocation, series)
                _finish(trace, invocation)
                return result
        invocation = Invocation(key, request_id, config, sink, version=version,
                                trace_id=trace.trace_id, marks=[] if recorded else None)
        threads = self.threads
        ticket = threads.enter(key) or await threads.wait(key)
        try:
            return await anyio.to_thread.run_sync(
                _on_worker, self.worker_nice, function.invoke, request, invocation,
                limiter=self.limiter,
            )  # fmt: skip
        finally:
            threads.leave(ticket)
            _instantiated(invocation, series)
            _finish(trace, invocation)


_worker = threading.local()  # of a thread running requests: whether it was niced


def _on_worker(
    nice: int,
    invoke: Callable[[GuestRequest, Invocation], GuestResponse],
    request: GuestRequest,
    invocation: Invocation,
) -> GuestResponse:
    """On a worker thread: its nice value raised once (EngineSettings.worker_nice), like the
    native workers', then the request."""
    if not getattr(_worker, "niced", False):
        lower_this_thread(nice)
        _worker.niced = True
    return invoke(request, invocation)


def _instantiated(invocation: Invocation, series: FunctionSeries) -> None:
    # Every instantiation counts, the inline attempt's too when it ran over its budget and the
    # request was run again on a thread: both were paid for.
    if invocation.instantiate_s is not None:
        series.instantiate.observe(invocation.instantiate_s)


def _finish(trace: RequestTrace, invocation: Invocation) -> None:
    """After an invocation that counts: its spans, and the count of lines the cap refused."""
    for name, start_ns, end_ns in invocation.marks or ():
        trace.add(name, start_ns, end_ns)
    invocation.report_dropped()


def create_app(runtime: NodeRuntime) -> ASGIApp:
    ops = ops_app(runtime)
    functions = FunctionServer(runtime)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await ops(scope, receive, send)
            return
        if scope["path"][:1] != "/":  # absolute-form (or "*"): rare, so off the fast path
            scope = http.from_absolute_form(scope)
        if scope["path"] not in OPS_PATHS:
            await functions(scope, receive, send)
        else:  # the node's own answers carry a request id too, like every other
            request_id = scope[REQUEST_ID_KEY] = http.request_id_from(scope["headers"])
            await ops(scope, receive, _with_request_id(send, request_id.encode()))

    return app


def _with_request_id(send: Send, request_id: bytes) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if not any(k == http.REQUEST_ID_B for k, _ in headers):
                message = {**message, "headers": [*headers, (http.REQUEST_ID_B, request_id)]}
        await send(message)

    return sending
