"""What `edge dev` adds around the node's app, for the person at the terminal and at curl.

A line per request on stderr, and the function's own error lines inside a 5xx error answer, as
`wrangler dev` shows an uncaught exception in the response (for a `function_exception`, also
its message and the traceback's last lines). Never on a node: clients of a deployed function
must not read what it logged.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from edge.asgi import ASGIApp, Message, Receive, Scope, Send
from edge.cli_output import Output
from edge.errors import FunctionError, FunctionException
from edge.node import http
from edge.sandbox.host import LogLine, LogSink
from edge.sandbox.uncaught import Uncaught

KEPT_REQUESTS = 64
TRACEBACK_TAIL_LINES = 6  # of an uncaught exception's, in the answer (all of it is in the log)
# The error codes of a function's own failure (FunctionError and subclasses), whose answer
# gets the function's log lines; a build failure already carries the compiler's output.
_FUNCTION_FAILURES = frozenset(
    {FunctionError.reason, *(cls.reason for cls in FunctionError.__subclasses__())}
)


@dataclass
class _Kept:
    lines: list[str] = field(default_factory=list)
    exception: Uncaught | None = None  # the SDK's report of an uncaught exception


class RecentLines:
    """A log sink that passes every line on and keeps the function's own lines (not the
    platform's) of the last KEPT_REQUESTS requests, by request id."""

    def __init__(self, sink: LogSink) -> None:
        self.sink = sink
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._lock = threading.Lock()  # functions log from worker threads

    def __call__(self, line: LogLine) -> None:
        self.sink(line)
        if line.source == "platform" or not line.request_id:
            return
        text = f"{line.level} {line.message}" if line.source == "log" else line.message
        with self._lock:
            kept = self._kept.get(line.request_id)
            if kept is None:
                kept = self._kept[line.request_id] = _Kept()
            kept.lines.append(text)
            if line.exception is not None:
                kept.exception = line.exception
            self._kept.move_to_end(line.request_id)
            while len(self._kept) > KEPT_REQUESTS:
                self._kept.popitem(last=False)

    def of(self, request_id: str) -> Sequence[str]:
        with self._lock:
            kept = self._kept.get(request_id)
            return tuple(kept.lines) if kept else ()

    def exception_of(self, request_id: str) -> Uncaught | None:
        with self._lock:
            kept = self._kept.get(request_id)
            return kept.exception if kept else None


class ErrorDetail:
    """Adds `function_log` (the failed request's own log lines) to a function failure's JSON."""

    def __init__(self, app: ASGIApp, recent: RecentLines) -> None:
        self.app = app
        self.recent = recent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def sent(message: Message) -> None:
            if (
                message["type"] == "http.response.start"
                and message["status"] >= 500
                # The function's own answers carry the region; the node's error answers not.
                and not http.header(message["headers"], b"x-edge-region")
            ):
                held.append(message)  # until the body says whether it is a function failure
                return
            if held and message["type"] == "http.response.body":
                held.append(message)
                if message.get("more_body", False):
                    return
                for out in self._detailed(held):
                    await send(out)
                held.clear()
                return
            await send(message)

        await self.app(scope, receive, sent)

    def _detailed(self, held: list[Message]) -> list[Message]:
        start, body = held[0], b"".join(m.get("body", b"") for m in held[1:])
        try:
            doc = json.loads(body)
        except ValueError:
            return held
        if not isinstance(doc, dict) or doc.get("error") not in _FUNCTION_FAILURES:
            return held
        request_id = str(doc.get("request_id", ""))
        doc["function_log"] = list(self.recent.of(request_id))
        exception = self.recent.exception_of(request_id)
        if doc["error"] == FunctionException.reason and exception is not None:
            # What a node's answer leaves out (see FunctionException), for the developer.
            text = f": {exception.message}" if exception.message else ""
            doc["message"] = f"function raised an uncaught exception: {exception.type_name}{text}"
            doc["traceback"] = exception.traceback.splitlines()[-TRACEBACK_TAIL_LINES:]
        detailed = json.dumps(doc).encode()
        headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(detailed)).encode()))
        return [{**start, "headers": headers}, {"type": "http.response.body", "body": detailed}]


class AccessLog:
    """One line per request on stderr (`12:15:07 GET /path?q=1 200 3.1 ms [request id]`), as
    `wrangler dev` and Fastly's Viceroy print them: what was asked, what the function answered
    and how long it took, next to the function's own log lines for that request id."""

    def __init__(self, app: ASGIApp, out: Output) -> None:
        self.app = app
        self.out = out

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answer: dict[str, object] = {"status": "-", "request_id": ""}

        async def sent(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                answer["request_id"] = http.header(message["headers"], http.REQUEST_ID_B)
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            took_ms = (time.perf_counter() - started) * 1000
            target = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
            if query := scope.get("query_string", b""):
                target += "?" + query.decode("latin-1")
            self.out.note(
                f"{time.strftime('%H:%M:%S')} {scope['method']} {target} {answer['status']} "
                f"{took_ms:.1f} ms [{answer['request_id']}]"
            )
