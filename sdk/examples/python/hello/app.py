"""hello: the smallest Python edge function."""

from edge_sdk import Request, Response, handler


@handler
def handle(req: Request) -> Response:
    return Response.text("Hello from Python!\n")
