"""Translating between raw ASGI HTTP and the function contract, and errors into responses."""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from edge.errors import (
    BuildFailed,
    EdgeError,
    FunctionOverloaded,
    InvalidResponse,
    RequestBodyTooLarge,
)

REQUEST_ID = "x-request-id"
REQUEST_ID_B = REQUEST_ID.encode()
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_LINE_BREAK_OR_NUL = re.compile("[\r\n\0]")
# Framing is the server's business, not the function's.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "upgrade",
        "proxy-connection",
        "te",
        "trailer",
    }
)
RawHeaders = list[tuple[bytes, bytes]]
# Response headers the node sets itself; a function's own value would contradict them.
_PLATFORM_SET = frozenset({REQUEST_ID, "traceparent"})


def header(headers: RawHeaders, name: bytes) -> str:
    for k, v in headers:
        if k == name:
            return v.decode("latin-1")
    return ""


def header_all(headers: RawHeaders, name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in headers if k == name]


CLOSE = (b"connection", b"close")


def declares_body(headers: RawHeaders) -> bool:
    """The request has a body (chunked, or a content-length that is not 0). An answer sent
    before that body was read ends the connection: the server cannot find the next request,
    so the answer says `Connection: close` and the client does not send one into it."""
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip(b" 0")):
            return True
    return False


def cookies(headers: RawHeaders) -> dict[str, str]:
    """The request's cookies by name. A header the parser refuses (an illegal name such as
    `<=`) counts as no cookies: the client wrote it, and a sticky split then falls back to
    the client's address rather than failing the request."""
    # HTTP/2 may split the cookie header into one field per cookie (RFC 9113 8.2.3).
    try:
        jar = SimpleCookie("; ".join(header_all(headers, b"cookie")))
    except CookieError:
        return {}
    return {k: m.value for k, m in jar.items()}


# A new id is this process's random prefix and a counter: unique like a uuid4 (32 hex digits)
# without a system call for randomness per request. Ids name requests; they grant nothing.
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count()  # next() is atomic under the GIL


def _new_prefix() -> None:
    global _ID_PREFIX
    _ID_PREFIX = os.urandom(8).hex()


os.register_at_fork(after_in_child=_new_prefix)  # a forked worker must not repeat our ids


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def request_id_from(headers: RawHeaders) -> str:
    """The caller's id when it is sane (so traces join up), else a new one."""
    given = header(headers, REQUEST_ID_B)
    return given if given and _REQUEST_ID_RE.match(given) else new_request_id()


def from_absolute_form(scope: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A request whose target is absolute (`GET http://host/path`, which a server must accept,
    RFC 9112 3.2.2) as the origin-form one it means: path from the target, and its host in
    place of the Host header (the target's wins). Any other scope is returned as it is."""
    target: str = scope["path"]
    if not target[:8].lower().startswith(("http://", "https://")):  # the scheme has no case
        return scope
    parts = urlsplit(target)
    raw = (scope.get("raw_path") or target.encode("latin-1")).decode("latin-1")
    raw_path = urlsplit(raw).path or "/"
    headers = [(k, v) for k, v in scope["headers"] if k != b"host"]
    return {
        **scope,
        "path": parts.path or "/",
        "raw_path": raw_path.encode("latin-1"),
        # Without userinfo: an http URI must not carry one (RFC 9110 4.2.4).
        "headers": [(b"host", parts.netloc.rpartition("@")[2].encode("latin-1")), *headers],
    }


def url_of(scope: MutableMapping[str, Any], host: str) -> str:
    if not host:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else "localhost"
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    query = scope.get("query_string", b"")
    url = f"{scope.get('scheme', 'http')}://{host}{path}"
    return f"{url}?{query.decode('latin-1')}" if query else url


async def read_body(
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    headers: RawHeaders,
    limit: int,
    http_version: str = "1.1",
) -> bytes:
    declared = header(headers, b"content-length")
    if (
        not declared
        and http_version in ("1.0", "1.1")
        and not header(headers, b"transfer-encoding")
    ):
        # HTTP/1 without either header means no body (RFC 9112 6.3): waiting for the server's
        # empty body message would cost a turn of the event loop per request.
        return b""
    if declared.isdigit() and int(declared) > limit:
        raise RequestBodyTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestBodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def guest_headers(headers: RawHeaders, request_id: str) -> list[tuple[str, str]]:
    # Header bytes are latin-1 on the wire (RFC 9110); names arrive lower-cased from the server.
    out = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers if k != REQUEST_ID_B]
    out.append((REQUEST_ID, request_id))
    return out


def response_headers(headers: Iterable[tuple[str, str]], request_id: str) -> RawHeaders:
    out = []
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in _PLATFORM_SET:
            continue
        if not _TOKEN_RE.match(name):
            raise InvalidResponse(f"function returned an invalid header name {name[:64]!r}")
        if _LINE_BREAK_OR_NUL.search(value):
            raise InvalidResponse(f"function returned a header {name!r} with a line break or NUL")
        try:
            out.append((lower.encode("latin-1"), value.encode("latin-1")))
        except UnicodeEncodeError:
            out.append((lower.encode("latin-1"), value.encode("utf-8")))
    out.append((REQUEST_ID_B, request_id.encode()))
    return out


# Statuses whose answers never carry content (RFC 9110 15.3.5, 15.3.6, 15.4.5). A 204 must not
# have a Content-Length and a 304's would describe a representation the node has not seen.
_NO_CONTENT = frozenset({204, 205, 304})


def framed(method: str, status: int, body: bytes, headers: RawHeaders) -> bytes:
    """The body to send for a function's answer, adding its Content-Length to `headers`: none
    for a status without content (a body given anyway is dropped), and for HEAD the length the
    body would have had."""
    if status in _NO_CONTENT:
        if status == 205:
            headers.append((b"content-length", b"0"))
        return b""
    headers.append((b"content-length", str(len(body)).encode()))
    return b"" if method == "HEAD" else body


def error_parts(error: EdgeError, request_id: str) -> tuple[int, RawHeaders, bytes]:
    doc = {"error": error.reason, "message": error.message, "request_id": request_id}
    if isinstance(error, BuildFailed):
        doc["compiler_output"] = error.output  # only `edge dev` serves unbuilt functions
    body = json.dumps(doc).encode()
    headers = [
        (b"content-type", b"application/json"),
        (REQUEST_ID_B, request_id.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if isinstance(error, FunctionOverloaded):
        headers.append((b"retry-after", str(error.retry_after_s).encode()))
    return error.status, headers, body
