"""Translating between HTTP (Starlette) and the function contract, and errors into responses."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable

from starlette.requests import Request
from starlette.responses import Response

from edge.errors import BuildFailed, EdgeError, InvalidResponse, RequestBodyTooLarge

REQUEST_ID = "x-request-id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
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


def request_id_for(request: Request) -> str:
    """The caller's id when it is sane (so traces join up), else a new one."""
    given = request.headers.get(REQUEST_ID, "")
    return given if _REQUEST_ID_RE.match(given) else uuid.uuid4().hex


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestBodyTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestBodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def guest_headers(request: Request, request_id: str) -> list[tuple[str, str]]:
    # Header bytes are latin-1 on the wire (RFC 9110); names arrive lower-cased from the server.
    out = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in request.headers.raw
        if k.lower() != REQUEST_ID.encode()
    ]
    out.append((REQUEST_ID, request_id))
    return out


def response_headers(
    headers: Iterable[tuple[str, str]], request_id: str
) -> list[tuple[bytes, bytes]]:
    out = []
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower == REQUEST_ID:
            continue
        if not _TOKEN_RE.match(name):
            raise InvalidResponse(f"function returned an invalid header name {name[:64]!r}")
        if any(c in value for c in "\r\n\0"):
            raise InvalidResponse(f"function returned a header {name!r} with a line break or NUL")
        try:
            out.append((lower.encode("latin-1"), value.encode("latin-1")))
        except UnicodeEncodeError:
            out.append((lower.encode("latin-1"), value.encode("utf-8")))
    out.append((REQUEST_ID.encode(), request_id.encode()))
    return out


class RawResponse(Response):
    """A Response whose headers are given as raw pairs, repeated names kept."""

    def __init__(self, status: int, body: bytes, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = status
        self.body = body
        self.background = None
        self.raw_headers = [*raw_headers, (b"content-length", str(len(body)).encode())]


def error_response(error: EdgeError, request_id: str) -> Response:
    doc = {"error": error.reason, "message": error.message, "request_id": request_id}
    if isinstance(error, BuildFailed):
        doc["compiler_output"] = error.output  # only `edge dev` serves unbuilt functions
    body = json.dumps(doc).encode()
    return RawResponse(
        error.status,
        body,
        [(b"content-type", b"application/json"), (REQUEST_ID.encode(), request_id.encode())],
    )
