"""Spin's `spin_sdk.http` on edge: Request, Response, IncomingHandler and send.

A request as Spin gives it: `method`, `uri` (the path and query, as on Spin: the full URL is the
`spin-full-url` header), `headers` (a dict, lower-case names, repeated ones joined with ", ",
plus the headers Spin's host adds, see SPIN_HEADERS) and `body` (bytes). The answer is a
`Response(status, headers, body)`: headers a mapping, body bytes, a str (UTF-8) or None.
An exception, or anything else returned, is edge's 500 `function_exception`, its traceback in
the function's log (Spin answers a bare 500 and prints it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from edge_sdk import _die_uncaught, _wit_answer
from wit_world import exports as _exports
from wit_world.imports import types as _types

# Added by Spin's host to every request (a client's own of these names is dropped). The
# function does not know the node's route, so the route ones are those of a Spin app's only
# component at `route = "/..."`; as sdk/js/spin-sdk.js has them.
SPIN_HEADERS = (
    "spin-full-url", "spin-path-info", "spin-matched-route", "spin-base-path",
    "spin-raw-component-route", "spin-component-route", "spin-client-addr",
)  # fmt: skip


@dataclass
class Request:
    method: str
    uri: str
    headers: Mapping[str, str]
    body: bytes | None


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes | str | None = None


class IncomingHandler:
    """Subclass it as `IncomingHandler` in the function's module; one instance a request."""

    def handle_request(self, request: Request) -> Response:
        raise NotImplementedError


def send(request: Request) -> Response:
    """Spin's outbound HTTP. Edge functions have no network access: always raises."""
    raise NotImplementedError(
        f"spin_sdk.http.send({request.method} {request.uri}): edge functions have no outbound "
        "HTTP"
    )


def spin_request(raw: _types.Request) -> Request:
    parts = urlsplit(raw.url)
    path = parts.path or "/"
    headers: dict[str, str] = {}
    for name, value in raw.headers:
        if name not in SPIN_HEADERS:
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
    headers.update(
        zip(
            SPIN_HEADERS,
            (raw.url, path, "/...", "/", "/...", "", raw.client_ip),
            strict=True,
        )
    )
    uri = f"{path}?{parts.query}" if parts.query else path
    return Request(raw.method, uri, headers, raw.body.encode("latin-1"))


def wit_response(resp: object) -> _types.Response:
    if not isinstance(resp, Response):
        raise TypeError(
            "handle_request(request) must return a spin_sdk.http.Response, got "
            f"{type(resp).__name__}"
        )
    return _wit_answer(resp.status, dict(resp.headers) if resp.headers else {}, resp.body)


def serving(handler_class: type[IncomingHandler]) -> type[_exports.Handler]:
    """The WIT export for a module's Spin `IncomingHandler` (edge_sdk.entry_handler)."""

    class Serving(_exports.Handler):
        def handle(self, req: _types.Request) -> _types.Response:
            try:
                return wit_response(handler_class().handle_request(spin_request(req)))
            except BaseException:
                _die_uncaught()

    return Serving
