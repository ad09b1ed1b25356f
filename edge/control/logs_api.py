"""The function-log endpoints of the control plane API (edge.control.log_store keeps the lines).

    POST /v1/node/logs                nodes ship batches (node token)
    GET  /v1/functions/{name}/logs    a tenant reads its function's lines (read scope), or with
                                      follow=1 keeps the answer open and streams new ones

A follow answer is NDJSON: one JSON line per log line, and an empty line every
HEARTBEAT_S when nothing happens, so a client (and any proxy) sees the stream is alive.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from edge.control.bodies import flag_param, int_param
from edge.control.errors import NotFound, PayloadTooLarge
from edge.control.feeds import RevisionFeed
from edge.control.log_store import LogStore
from edge.control.logs import StoredLine, parse_batch
from edge.control.records import Principal
from edge.control.regions import REGION_RE, parse_duration_s
from edge.errors import BadRequest

HEARTBEAT_S = 15.0
MAX_LIMIT = 10_000
MAX_BATCH_BYTES = 16 * 1024 * 1024  # a node's batch is at most 1000 lines of 4 KiB
NDJSON = "application/x-ndjson"


TenantAuth = Callable[[Request, str], Awaitable[tuple[int, Principal]]]
NodeAuth = Callable[[Request], Awaitable[Principal]]
JsonBody = Callable[[Request], Awaitable[dict[str, Any]]]
Run = Callable[..., Awaitable[Any]]


def _query(request: Request, now: float) -> tuple[int, float | None, str | None, int, bool]:
    q = request.query_params
    after = int_param(q.get("after", "0"), "after")
    limit = int_param(q.get("limit", "1000"), "limit")
    since = None
    if q.get("since"):
        try:
            since = now - parse_duration_s(q["since"])
        except ValueError as e:
            raise BadRequest(f"since: {e}") from None
    region = q.get("region") or None
    if region is not None and not REGION_RE.match(region):
        raise BadRequest(f"bad region name {region!r}")
    follow = flag_param(q.get("follow"), "follow")
    return after, since, region, max(0, min(limit, MAX_LIMIT)), follow


def log_routes(
    store: Any,  # edge.control.store.Store
    logs: LogStore,
    tenant: TenantAuth,
    node: NodeAuth,
    json_body: JsonBody,
    run: Run,
    function_name: Callable[[Request], str],
    now: Callable[[], float] = time.time,
) -> list[BaseRoute]:
    feed = RevisionFeed(logs.seq)  # here counting log lines: followers wait on it

    async def node_logs(request: Request) -> Response:
        """Ship function log lines (node token).

        Body: {"node_id", "region", "lines": [{"function": "<tenant>/<name>", "version",
        "request_id", "trace_id", "level", "source", "message", "time"}, ...]}. Malformed lines
        and lines of functions no tenant has are counted in "rejected", not stored."""
        await node(request)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BATCH_BYTES:
            raise PayloadTooLarge(f"a log batch is limited to {MAX_BATCH_BYTES} bytes")
        node_id, region, lines, malformed = parse_batch(await json_body(request))
        kept = await run(logs.add, node_id, region, lines)
        if kept:
            await feed.publish(logs.seq)
        return JSONResponse({"kept": kept, "rejected": malformed + len(lines) - kept})

    async def function_logs(request: Request) -> Response:
        """A function's log lines from every node, oldest first (scope read).

        Query: since (a duration: 90s, 10m, 1h), region, after (the seq of the last line seen),
        limit (the newest N; default 1000), follow=1 (stream NDJSON, new lines as they come).
        Each line: seq, time, function, version, region, node, request_id, trace_id, level,
        source ("log", "stdout", "stderr", or "platform" for the platform's own errors such as
        traps and deadlines), message."""
        tenant_id, _ = await tenant(request, "read")
        name = function_name(request)
        if name not in await run(store.function_names, tenant_id):
            raise NotFound(f"no function {name!r}")
        after, since, region, limit, follow = _query(request, now())

        def read(after_seq: int, most: int) -> list[StoredLine]:
            return logs.query(tenant_id, name, after_seq=after_seq, since_unix=since,
                              region=region, limit=most)  # fmt: skip

        if not follow:
            lines = await run(read, after, limit)
            return JSONResponse({"lines": [s.to_json() for s in lines],
                                 "next": lines[-1].seq if lines else max(after, 0)})

        async def stream() -> AsyncIterator[str]:
            cursor, first = after, True
            while True:
                upto = logs.seq
                lines = await run(read, cursor, limit if first else MAX_LIMIT)
                # A batch stored while reading may be in `lines` already: never show it twice.
                first, cursor = False, max(upto, lines[-1].seq if lines else 0)
                if lines:
                    yield "".join(json.dumps(s.to_json(), ensure_ascii=False) + "\n"
                                  for s in lines)  # fmt: skip
                if await feed.wait_beyond(cursor, HEARTBEAT_S) is None:
                    yield "\n"

        return StreamingResponse(stream(), media_type=NDJSON)

    return [
        Route("/v1/node/logs", node_logs, methods=["POST"]),
        Route("/v1/functions/{name}/logs", function_logs, methods=["GET"]),
    ]
