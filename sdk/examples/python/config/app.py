"""config: answers the "greeting" value from edge.toml's [config] table."""

from edge_sdk import Request, Response, config, handler, log


@handler
def handle(req: Request) -> Response:
    greeting = config.get("greeting")
    if greeting is None:
        log.warn("greeting not configured")
        return Response.text("config key 'greeting' is not set\n", status=404)
    log.info("answering with the configured greeting")
    return Response.text(greeting + "\n")
