"""{{name}}: an edge function. One call of `handle` per request."""

from edge_sdk import Request, Response, config, handler, log


@handler
def handle(req: Request) -> Response:
    greeting = config.get("greeting", "Hello from Python!")
    log.info(f"{req.method} {req.url}")
    return Response.text(f"{greeting}\n")
