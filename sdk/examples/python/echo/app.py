"""echo: answers with everything the function knows about the request, as JSON."""

from edge_sdk import Request, Response, handler


@handler
def handle(req: Request) -> Response:
    return Response.json(
        {
            "method": req.method,
            "url": req.url,
            "headers": [[name, value] for name, value in req.headers],
            "body": req.text(),
            "client_ip": req.client_ip,
            "region": req.region,
            "node_id": req.node_id,
            "request_id": req.request_id,
            "geo": req.geo.as_dict(),
        }
    )
