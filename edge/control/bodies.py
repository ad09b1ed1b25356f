"""Reading JSON request bodies strictly: a wrong type is a BadRequest naming the field."""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

from starlette.requests import Request

from edge.config.ip import ip_of_version
from edge.control.errors import PayloadTooLarge
from edge.errors import BadRequest

T = TypeVar("T")


# SQLite's integers are signed 64-bit: a larger JSON number would fail deep in the store.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def field(body: dict[str, Any], key: str, kind: type[T], default: T | None = None) -> T:
    value = body.get(key, default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"{key!r} must be {kind.__name__}")
    if isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
        raise BadRequest(f"{key!r} is out of range (a signed 64-bit integer)")
    return value


def int_param(text: str, what: str) -> int:
    """An integer from a URL (path or query) that fits the store, else BadRequest."""
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{what} must be an integer, got {text[:40]!r}") from None
    if not INT_MIN <= value <= INT_MAX:
        raise BadRequest(f"{what} is out of range (a signed 64-bit integer)")
    return value


def flag_param(text: str | None, what: str) -> bool:
    """A yes/no from the query: absent, "0", "false" or "no" is no; "1", "true" or "yes" is
    yes; anything else is a BadRequest (a typo must not quietly mean no)."""
    if text is None or text.lower() in ("0", "false", "no", ""):
        return False
    if text.lower() in ("1", "true", "yes"):
        return True
    raise BadRequest(f"{what} must be 1 or 0 (true or false), got {text[:40]!r}")


def wait_param(text: str, limit_s: float) -> float:
    """A long poll's wait in seconds from the query, clamped to [0, limit_s]. NaN is refused:
    it passes both clamps (every comparison with it is false) and a NaN timeout waits forever."""
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"wait_s must be a number of seconds, got {text[:40]!r}") from None
    if math.isnan(value):
        raise BadRequest("wait_s must be a number of seconds, got NaN")
    return min(max(value, 0.0), limit_s)


def number(body: dict[str, Any], key: str) -> float:
    """A finite number. Python's JSON reads NaN, Infinity and 1e400 (as infinity); stored,
    they would make every later answer that shows them fail (JSON has no such numbers)."""
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{key!r} must be a number")
    try:
        result = float(value)
    except OverflowError:  # an integer of hundreds of digits
        result = math.inf
    if not math.isfinite(result):
        raise BadRequest(f"{key!r} must be a finite number")
    return result


def optional_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    return field(body, key, int)


# The largest JSON body any endpoint takes (a node's log batch: 1000 lines of up to 4 KiB).
MAX_JSON_BYTES = 16 * 1024 * 1024


async def read_body(request: Request, limit_bytes: int, what: str) -> bytes:
    """The body, or PayloadTooLarge as soon as it passes `limit_bytes`: a body sent without
    a content-length (chunked) is never held in memory past the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise PayloadTooLarge(f"{what} is over {limit_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise PayloadTooLarge(f"{what} is over {limit_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request) -> dict[str, Any]:
    raw = await read_body(request, MAX_JSON_BYTES, "the JSON body")
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def optional_ip(body: dict[str, Any], key: str, version: int) -> str:
    """An IPv`version` address in its canonical text, or "" when absent, null or empty."""
    value = body.get(key) or ""
    if not isinstance(value, str):
        raise BadRequest(f"{key!r} must be a string")
    addr = ip_of_version(value, version) if value else None
    if value and addr is None:
        raise BadRequest(f"{key!r} must be an IPv{version} address, got {value[:60]!r}")
    return str(addr or "")
