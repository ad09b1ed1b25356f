"""edge_sdk: helpers for writing edge functions in Python.

    from edge_sdk import Request, Response, handler, config, log

    @handler
    def handle(req: Request) -> Response:
        return Response.text("Hello from Python!\\n")

`edge build` puts this package on componentize-py's path next to the generated `wit_world`
bindings and builds a small entry module that imports the user's module and exports `Handler`
(the class componentize-py instantiates for the WIT export `edge:function/handler@0.1.0`).

The module is imported at build time too (componentize-py snapshots the initialised
interpreter), so module-level code must not call `config` or `log`: those exist only per request.
Import every module at the top: there are no files at request time, so an `import` that runs
first inside the handler fails with ModuleNotFoundError. An exception the handler lets out
ends the request with a 500 `function_exception` naming its type; its traceback is one error
line in the function's log.
"""

from __future__ import annotations

import json as _json
import os as _os
import sys as _sys
import traceback as _traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, NoReturn

from wit_world import exports as _exports
from wit_world.imports import config as _config
from wit_world.imports import log as _log
from wit_world.imports import types as _types

__all__ = ["Geo", "Handler", "Request", "Response", "config", "handler", "log"]

HandlerFunc = Callable[["Request"], "Response"]


def _header_list(headers: dict[str, str] | list[tuple[str, str]] | None) -> list[tuple[str, str]]:
    # Header names are lower-case on the wire contract; accept either a dict or ordered pairs.
    if headers is None:
        return []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return [(str(name).lower(), str(value)) for name, value in pairs]


@dataclass(frozen=True)
class Geo:
    country: str | None
    continent: str | None
    city: str | None
    latitude: float | None
    longitude: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "country": self.country,
            "continent": self.continent,
            "city": self.city,
            "latitude": self.latitude,
            "longitude": self.longitude,
        }


class Request:
    """The incoming request: the WIT record plus lookups and body decoding."""

    def __init__(self, raw: _types.Request) -> None:
        self.raw = raw
        self.method: str = raw.method
        self.url: str = raw.url
        self.headers: list[tuple[str, str]] = list(raw.headers)
        # The WIT carries bodies as ISO-8859-1 strings (one code point per byte, see `type body`
        # in function.wit); latin-1 is exactly that mapping.
        self.body: bytes = raw.body.encode("latin-1")
        self.client_ip: str = raw.client_ip
        ctx = raw.context
        self.region: str = ctx.region
        self.node_id: str = ctx.node_id
        self.request_id: str = ctx.request_id
        g = ctx.geo
        self.geo = Geo(g.country, g.continent, g.city, g.latitude, g.longitude)

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header `name` (case-insensitive), or `default`."""
        key = name.lower()
        for n, v in self.headers:
            if n == key:
                return v
        return default

    def header_all(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self.headers if n == key]

    def text(self, encoding: str = "utf-8") -> str:
        return self.body.decode(encoding, errors="replace")

    def json(self) -> Any:
        return _json.loads(self.body)


@dataclass
class Response:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def __post_init__(self) -> None:
        # As in Spin's Python SDK, `Response(200, {"content-type": "text/plain"}, "hi")` works:
        # headers may be a dict (a list of its keys reached the host and failed), the body a str.
        self.headers = _header_list(self.headers)
        if isinstance(self.body, str):
            self.body = self.body.encode()

    @classmethod
    def binary(
        cls,
        body: bytes,
        status: int = 200,
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
        content_type: str = "application/octet-stream",
    ) -> Response:
        hs = _header_list(headers)
        if not any(n == "content-type" for n, _ in hs):
            hs.append(("content-type", content_type))
        return cls(status, hs, bytes(body))

    @classmethod
    def text(
        cls,
        body: str,
        status: int = 200,
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
    ) -> Response:
        return cls.binary(body.encode(), status, headers, "text/plain; charset=utf-8")

    @classmethod
    def json(
        cls,
        obj: Any,
        status: int = 200,
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
    ) -> Response:
        return cls.binary(_json.dumps(obj).encode(), status, headers, "application/json")

    def header(self, name: str, value: str) -> Response:
        """Adds a header and returns self, for chaining."""
        self.headers.append((name.lower(), value))
        return self

    def _to_wit(self) -> _types.Response:
        return _types.Response(self.status, list(self.headers), bytes(self.body).decode("latin-1"))


def _wit_answer(status: object, headers: Any, body: object) -> _types.Response:
    """A port's answer (spin_sdk, workers) checked and made the WIT record: `status` an int,
    `body` bytes-like, str (UTF-8) or None, `headers` a mapping or pairs."""
    if type(status) is not int:
        raise TypeError(f"Response status must be an int, got {type(status).__name__}")
    if body is None:
        body = b""
    if not isinstance(body, (bytes, bytearray, memoryview, str)):
        raise TypeError(f"Response body must be bytes, str or None, got {type(body).__name__}")
    data = body.encode() if isinstance(body, str) else bytes(body)
    return Response(status, headers or [], data)._to_wit()


class _Log:
    """log.info("...") and friends: one structured line each, tagged by the host."""

    def _write(self, level: _log.Level, message: object) -> None:
        # The function's own lines never start with NUL: the SDKs' marks for the node do
        # (edge/sandbox/uncaught.py, awaiting.py), and a client's text it logs must not pass
        # for one (the node would drop the line, or take it for an exception's report).
        text = str(message)
        if text[:1] == "\0":
            text = "\ufffd" + text[1:]
        _log.write(level, text)

    def trace(self, message: object) -> None:
        self._write(_log.Level.TRACE, message)

    def debug(self, message: object) -> None:
        self._write(_log.Level.DEBUG, message)

    def info(self, message: object) -> None:
        self._write(_log.Level.INFO, message)

    def warn(self, message: object) -> None:
        self._write(_log.Level.WARN, message)

    def error(self, message: object) -> None:
        self._write(_log.Level.ERROR, message)


class _Config:
    def get(self, key: str, default: str | None = None) -> str | None:
        """The value of `key` from edge.toml's [config] table, or `default` when unset."""
        value = _config.get(key)
        return default if value is None else value


log = _Log()
config = _Config()

_registered: HandlerFunc | None = None


def handler(func: HandlerFunc) -> HandlerFunc:
    """Marks the function that answers every request. Exactly one per program."""
    global _registered
    if _registered is not None and _registered is not func:
        raise RuntimeError(f"@handler used twice: {_registered.__name__} and {func.__name__}")
    _registered = func
    return func


class Handler(_exports.Handler):
    """The export componentize-py instantiates; adapts WIT records to the helpers above."""

    def handle(self, req: _types.Request) -> _types.Response:
        try:
            if _registered is None:
                raise RuntimeError("no @handler function registered")
            resp = _registered(Request(req))
            if isinstance(resp, str):
                resp = Response.text(resp)
            if not isinstance(resp, Response):
                raise TypeError(f"the handler must return a Response, got {type(resp).__name__}")
            return resp._to_wit()
        except BaseException:
            _die_uncaught()


# The node's mark for a report of an uncaught exception (edge/sandbox/uncaught.py): it must
# be the last host call before the trap.
_REPORT_MARK = "\0edge:uncaught-exception\0"


def _die_uncaught() -> NoReturn:
    # Left to componentize-py, an exception is printed a line at a time and a Rust panic
    # message follows it. Reported so, the node logs the traceback as one line and answers
    # 500 `function_exception` naming the exception's type.
    exc = _sys.exc_info()[1]
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    try:
        text = str(exc)
    except BaseException:  # a __str__ that raises: the type still says what happened
        text = ""
    # From the handler's frame on: this wrapper's own frame is noise to the function's author.
    tb = exc.__traceback__ if exc is not None else None
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    report = "".join(_traceback.format_exception(kind, exc, tb)).rstrip("\n")
    fields = [name.replace("\0", ""), text.replace("\0", "\ufffd"), report]
    for stream in (_sys.stdout, _sys.stderr):  # what was printed comes first in the log
        try:
            stream.flush()
        except BaseException:
            pass
    try:
        _log.write(_log.Level.ERROR, _REPORT_MARK + "\0".join(fields))
    except BaseException:  # text the host cannot take (a lone surrogate): a plain trap then
        _sys.stderr.write("Uncaught exception in the request handler:\n" + report + "\n")
        _sys.stderr.flush()
    _os.abort()


def entry_handler(user_module: ModuleType) -> type[_exports.Handler]:
    """Used by the generated build entry: the user's own `Handler` class if it defines one
    (the raw componentize-py style), else Spin's shape (a subclass of
    spin_sdk.http.IncomingHandler named `IncomingHandler`), else a Cloudflare Python Worker's
    (a subclass of workers.WorkerEntrypoint named `Default`, or `on_fetch`), else the SDK's,
    which needs a @handler function."""
    own = getattr(user_module, "Handler", None)
    if isinstance(own, type) and own is not Handler:
        return own
    spin = _sys.modules.get("spin_sdk.http")
    own = getattr(user_module, "IncomingHandler", None)
    base = getattr(spin, "IncomingHandler", None)
    if base is not None and isinstance(own, type) and issubclass(own, base) and own is not base:
        return spin.serving(own)  # type: ignore[union-attr, no-any-return]
    cf = _sys.modules.get("workers")
    if cf is not None and hasattr(cf, "entrypoint"):  # ours: Cloudflare's Python Workers shapes
        base = cf.WorkerEntrypoint
        own = getattr(user_module, "Default", None)
        if isinstance(own, type) and issubclass(own, base) and own is not base:
            return cf.entrypoint(own)  # type: ignore[no-any-return]
        own = getattr(user_module, "on_fetch", None)
        if callable(own):
            return cf.on_fetch(own)  # type: ignore[no-any-return]
    if _registered is None:
        raise RuntimeError(
            f"{user_module.__name__}.py defines no request handler: decorate a function "
            "with @edge_sdk.handler, or define Spin's `class IncomingHandler("
            "spin_sdk.http.IncomingHandler)` with a handle_request method, or a Cloudflare "
            "Python Worker's `class Default(workers.WorkerEntrypoint)` with a fetch method"
        )
    return Handler
