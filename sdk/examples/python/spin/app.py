# spin: a component written for Spin's Python SDK, as written there. Its variable
# (`variables.get("greeting")`) is edge's configuration value of that name. See README "Porting
# from Cloudflare Workers / Spin (Python)".
from spin_sdk import http, variables
from spin_sdk.http import Request, Response


class IncomingHandler(http.IncomingHandler):
    def handle_request(self, request: Request) -> Response:
        name = request.headers.get("x-name", "world")
        return Response(
            200,
            {"content-type": "text/plain; charset=utf-8"},
            bytes(f"{variables.get('greeting')}, {name}!\n", "utf-8"),
        )
