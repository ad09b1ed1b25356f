"""`workers` as edge runs it: what a Cloudflare Python Worker imports.

    from workers import Response, WorkerEntrypoint

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            return Response(f"Hello, {self.env.GREETING}!")

`edge build` puts this module on componentize-py's path beside edge_sdk; a module defining a
subclass of `WorkerEntrypoint` named `Default` (or, the older shape, a top-level
`on_fetch(request, env)`) is served by it (see serving). Workers' Python runs in Pyodide, where
`request` is the JavaScript Request; here it is a Python object with the same names (`url`,
`method`, `headers.get`, `await text()`, `await json()`, `cf`). `self.env.NAME` is the
function's configuration value NAME. A handler may be async; it runs to its end on the
request's own thread, with nothing to wait for (a function has no I/O): an await of
anything but another coroutine of the handler (or `asyncio.sleep(0)`) is a RuntimeError.
"""

from __future__ import annotations

import inspect
import json as _json
from collections.abc import Callable, Coroutine, Iterator
from types import SimpleNamespace
from typing import Any

from edge_sdk import _die_uncaught, _wit_answer
from edge_sdk import config as _config
from edge_sdk import log as _log
from wit_world import exports as _exports
from wit_world.imports import types as _types

__all__ = ["Headers", "Request", "Response", "WorkerEntrypoint", "fetch"]


class Headers:
    """Case-insensitive, as the Web's: `get` joins repeated values with ", " (set-cookie's
    included; `get_all` keeps them apart)."""

    def __init__(self, pairs: Any = None) -> None:
        items = pairs.items() if hasattr(pairs, "items") else (pairs or [])
        self._pairs = [(str(n).lower(), str(v)) for n, v in items]

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.get_all(name)
        return ", ".join(values) if values else default

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self._pairs if n == key]

    def has(self, name: str) -> bool:
        return bool(self.get_all(name))

    def set(self, name: str, value: str) -> None:
        self.delete(name)
        self.append(name, value)

    def append(self, name: str, value: str) -> None:
        self._pairs.append((name.lower(), str(value)))

    def delete(self, name: str) -> None:
        key = name.lower()
        self._pairs = [(n, v) for n, v in self._pairs if n != key]

    def items(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._pairs))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.has(name)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return self.items()


class Request:
    def __init__(self, raw: _types.Request) -> None:
        self.method: str = raw.method
        self.url: str = raw.url
        self.headers = Headers(raw.headers)
        self._body = raw.body.encode("latin-1")
        g = raw.context.geo
        # Workers' `request.cf` names; latitude and longitude are strings there too. A field
        # the node's GeoIP database does not know is None.
        self.cf = SimpleNamespace(
            country=g.country, continent=g.continent, city=g.city,
            latitude=None if g.latitude is None else str(g.latitude),
            longitude=None if g.longitude is None else str(g.longitude),
        )  # fmt: skip

    async def text(self) -> str:
        return self._body.decode("utf-8", errors="replace")

    async def json(self) -> Any:
        return _json.loads(self._body)

    async def bytes(self) -> bytes:
        return self._body


class Response:
    def __init__(
        self, body: str | bytes | None = None, status: int = 200, headers: Any = None
    ) -> None:
        self.body = body
        self.status = status
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: Any = None) -> Response:
        out = cls(_json.dumps(data), status, headers)
        if not out.headers.has("content-type"):
            out.headers.set("content-type", "application/json")
        return out

    @classmethod
    def redirect(cls, url: str, status: int = 302) -> Response:
        return cls(None, status, {"location": url})


class _Env:
    """`env.NAME`: the function's configuration value NAME (an unset one: AttributeError, as
    a missing property of Pyodide's JavaScript `env`)."""

    def __getattr__(self, name: str) -> str:
        value = _config.get(name)
        if value is None:
            raise AttributeError(f"env has no {name!r}: not set in the function's config")
        return value

    def __getitem__(self, name: str) -> str:
        return self.__getattr__(name)


class _Context:
    def __init__(self) -> None:
        self.waiting: list[Any] = []

    def waitUntil(self, work: Any) -> None:  # Workers' name
        self.waiting.append(work)

    wait_until = waitUntil

    def passThroughOnException(self) -> None:  # Workers' name
        """Accepted, does nothing: there is no origin to fall back to."""


class WorkerEntrypoint:
    """Subclass it as `Default`; one instance a request, made with (ctx, env)."""

    def __init__(self, ctx: Any = None, env: Any = None) -> None:
        self.ctx = ctx
        self.env = env


async def fetch(resource: Any, *_: Any, **__: Any) -> Response:
    """Workers' outbound fetch. Edge functions have no network access: always raises."""
    raise NotImplementedError(f"fetch({resource!r}): edge functions have no outbound HTTP")


def run(work: Any) -> Any:
    """Runs a coroutine (or returns a plain value) to its end without an event loop."""
    if not isinstance(work, Coroutine):
        return work
    try:
        while True:
            if work.send(None) is not None:  # a bare yield (asyncio.sleep(0)) only
                work.close()
                raise RuntimeError(
                    "the handler awaited something edge cannot wait for: a function has no I/O"
                )
    except StopIteration as done:
        return done.value


def wit_response(resp: object, who: str) -> _types.Response:
    if not isinstance(resp, Response):
        raise TypeError(f"{who} must return a workers.Response, got {type(resp).__name__}")
    headers = list(resp.headers.items())
    if isinstance(resp.body, str) and not resp.headers.has("content-type"):
        headers.append(("content-type", "text/plain;charset=UTF-8"))  # as the Web's Response
    return _wit_answer(resp.status, headers, resp.body)


def serving(call: Callable[[Request, _Env, _Context], Any], who: str) -> type[_exports.Handler]:
    """The WIT export for a Worker: `call(request, env, ctx)` runs its handler."""

    class Serving(_exports.Handler):
        def handle(self, req: _types.Request) -> _types.Response:
            try:
                ctx = _Context()
                answer = wit_response(run(call(Request(req), _Env(), ctx)), who)
                # As edge's JavaScript Workers: waitUntil work runs before the answer leaves;
                # its exception is an error line, the answer stands.
                for work in ctx.waiting:
                    try:
                        run(work)
                    except Exception as e:
                        _log.error(f"waitUntil work raised {type(e).__name__}: {e}")
                return answer
            except BaseException:
                _die_uncaught()

    return Serving


def entrypoint(default: type[WorkerEntrypoint]) -> type[_exports.Handler]:
    def call(request: Request, env: _Env, ctx: _Context) -> Any:
        return default(ctx, env).fetch(request)  # type: ignore[attr-defined]

    return serving(call, "Default.fetch(request)")


def on_fetch(handler: Callable[..., Any]) -> type[_exports.Handler]:
    """The older shape: a top-level `on_fetch(request, env)` (or `(request, env, ctx)`)."""
    takes_ctx = len(inspect.signature(handler).parameters) >= 3

    def call(request: Request, env: _Env, ctx: _Context) -> Any:
        return handler(request, env, ctx) if takes_ctx else handler(request, env)

    return serving(call, "on_fetch(request, env)")
