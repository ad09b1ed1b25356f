"""`edge node` with the sandbox call replaced by a canned answer: for bench/http.py only.

Everything else is the production node (Hypercorn settings, routing, request ids, metrics,
tracing, headers); the function is loaded and compiled as usual but never called, and every
request gets the C hello's answer. Its requests/s next to the real node's show how much of the
gap to bare Starlette is the sandbox call itself.

    python -m bench.canned_node --config node.toml
"""

from __future__ import annotations

import sys

from edge.cli import main
from edge.sandbox.abi import GuestResponse
from edge.sandbox.function import LoadedFunction

ANSWER = GuestResponse(200, [("content-type", "text/plain; charset=utf-8")], b"Hello from C!\n")


def _canned(*_: object, **__: object) -> GuestResponse:
    return ANSWER


if __name__ == "__main__":
    LoadedFunction.invoke = _canned  # type: ignore[method-assign]
    LoadedFunction.pooled = lambda *_: None  # type: ignore[method-assign]
    sys.argv = ["edge", "node", *sys.argv[1:]]
    main()
