"""Reading a request body from ASGI: when there is none to wait for, and when there is."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest

from edge.errors import RequestBodyTooLarge
from edge.node.http import read_body


class Receiver:
    def __init__(self, *chunks: bytes) -> None:
        self.messages = [
            {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
            for i, c in enumerate(chunks)
        ]
        self.calls = 0

    async def __call__(self) -> MutableMapping[str, Any]:
        self.calls += 1
        return self.messages.pop(0)


def test_http1_request_without_length_or_chunking_has_no_body() -> None:
    receive = Receiver(b"")
    assert asyncio.run(read_body(receive, [(b"host", b"x")], 100, "1.1")) == b""
    assert receive.calls == 0  # nothing awaited


@pytest.mark.parametrize(
    "headers",
    [[(b"content-length", b"5")], [(b"transfer-encoding", b"chunked")]],
)
def test_declared_bodies_are_read(headers: list[tuple[bytes, bytes]]) -> None:
    receive = Receiver(b"he", b"llo")
    assert asyncio.run(read_body(receive, headers, 100, "1.1")) == b"hello"


def test_http2_body_is_read_without_length() -> None:
    receive = Receiver(b"data")
    assert asyncio.run(read_body(receive, [], 100, "2")) == b"data"


def test_chunked_body_over_the_limit_is_refused() -> None:
    receive = Receiver(b"x" * 60, b"x" * 60)
    with pytest.raises(RequestBodyTooLarge):
        asyncio.run(read_body(receive, [(b"transfer-encoding", b"chunked")], 100, "1.1"))
