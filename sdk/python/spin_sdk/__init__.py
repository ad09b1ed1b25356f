"""spin_sdk as edge runs it: what a Python component written for Spin's Python SDK imports.

    from spin_sdk import http, variables
    from spin_sdk.http import Request, Response

    class IncomingHandler(http.IncomingHandler):
        def handle_request(self, request: Request) -> Response:
            return Response(200, {"content-type": "text/plain"}, b"Hello")

`edge build` puts this package on componentize-py's path beside edge_sdk; a module that defines
a subclass of `spin_sdk.http.IncomingHandler` named `IncomingHandler` is served by it (see
http.serving). Here: `http` (with `http.simple`, the same names) and `variables` (edge's
`config`). Spin's other modules (key_value, sqlite, redis, llm, ...) are not here: importing
one fails the build with an ImportError naming it.
"""
