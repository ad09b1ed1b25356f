"""The baseline for bench/http.py: a bare Starlette "hello" app on the same Hypercorn settings."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route


async def hello(_: Request) -> Response:
    return PlainTextResponse("Hello from Starlette!\n")


app = Starlette(routes=[Route("/{path:path}", hello)])

if __name__ == "__main__":
    import asyncio
    import sys

    from edge.node.server import run

    asyncio.run(run(app, sys.argv[1]))
