"""The host side of a function's imports: log, config, and WASI with every capability denied.

One linker per loaded function, because what is linked depends on the function: its grants
(`[capabilities]` in edge.toml) and the exact WASI versions it imports (shadowing a WASI
interface must name the version the component imports).

Host calls find the request they belong to through a thread-local: an invocation runs on one
worker thread from instantiate to post-return, and wasmtime calls imports on that thread. The
native request path (functions without WASI, see native_invoke) has log and config in C and
records their calls; `replay` does what these functions would have done, once the call is over.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wasmtime import WasiConfig
from wasmtime import component as cm

from edge.config.function import Capabilities
from edge.sandbox import awaiting, capi, uncaught
from edge.sandbox.stackmap import StackMapper
from edge.sandbox.uncaught import Uncaught

LOG_LEVELS = ("trace", "debug", "info", "warn", "error")
MAX_LOG_LINE_BYTES = 4096
MAX_LOG_LINES_PER_REQUEST = 200


@dataclass(frozen=True)
class LogLine:
    function: str
    request_id: str
    level: str
    message: str
    source: str  # "log" (the log import), "stdout", "stderr", or "platform"
    time_unix: float
    version: str = ""  # the deployed version's label ("3"), "" for a static node
    trace_id: str = ""  # W3C trace id of the request (edge.node.tracecontext)
    # On the line of an SDK's uncaught-exception report, for `edge dev`'s answer; sinks that
    # write or ship lines leave it out (its text is the traceback already).
    exception: Uncaught | None = None


LogSink = Callable[[LogLine], None]


@dataclass
class Invocation:
    """What host calls need to know about the request being served on this thread."""

    function: str
    request_id: str
    config: Mapping[str, str]
    sink: LogSink
    started_unix: float = field(default_factory=time.time)
    version: str = ""
    trace_id: str = ""
    # (span name, start, end) in unix ns, appended by the sandbox only when the request's spans
    # are recorded: None costs nothing.
    marks: list[tuple[str, int, int]] | None = None
    lines: int = 0
    dropped: int = 0
    # Set when this invocation created a fresh instance (not when it reused one): for metrics.
    instantiate_s: float | None = None
    # The SDK's report of an uncaught exception while no host import has been called since
    # (see edge.sandbox.uncaught): read by the sandbox when the call traps.
    uncaught: Uncaught | None = None
    reported: bool = False  # a report was logged (once a request, over the line cap too)
    # Between the JS SDK's marks around its handler's Promise (see edge.sandbox.awaiting).
    awaiting: bool = False
    # Between its marks around waitUntil's promises: one is still pending.
    wait_until_pending: bool = False
    # Logs what guest stdio holds without its newline yet (OutputRoute.flush), so that what
    # was printed before a report comes before it in the log.
    flush_output: Callable[[], None] | None = None
    # Set by the sandbox for a run under a short budget on the event loop (edge.node.inline),
    # where a host call must not block; `rerunnable`: one over the budget is run again on a
    # worker thread (the budget is shorter than the deadline).
    inline: bool = False
    rerunnable: bool = False

    def log(self, level: str, message: str, source: str, at: float | None = None) -> None:
        """`at`: when it was said (unix seconds), if not now."""
        if self.lines >= MAX_LOG_LINES_PER_REQUEST:
            self.dropped += 1
            return
        self.lines += 1
        if len(message) > MAX_LOG_LINE_BYTES:
            message = message[:MAX_LOG_LINE_BYTES] + "…(truncated)"
        self.sink(LogLine(self.function, self.request_id, level, message, source,
                          time.time() if at is None else at, self.version,
                          self.trace_id))  # fmt: skip

    def report_uncaught(self, message: str) -> None:
        """The SDK's report (`message` is one, see `uncaught.is_report`): its traceback becomes
        one error line, and the exception is the request's until another host call."""
        report = uncaught.parse(message)
        self.uncaught = report
        if self.flush_output is not None:
            self.flush_output()
        # Logged over the line cap too, once: an SDK reports as its last act, so a request's
        # first report is its own, and more are a function writing marks.
        if self.reported:
            if self.lines >= MAX_LOG_LINES_PER_REQUEST:
                self.dropped += 1
                return
            self.lines += 1
        self.reported = True
        self.sink(LogLine(self.function, self.request_id, "error", report.traceback, "log",
                          time.time(), self.version, self.trace_id, report))  # fmt: skip

    def report_dropped(self) -> None:
        """Once the request is over: says how many lines the per-request cap refused."""
        if self.dropped:
            self.sink(LogLine(
                self.function, self.request_id, "warn",
                f"{self.dropped} log lines dropped: over the limit of "
                f"{MAX_LOG_LINES_PER_REQUEST} per request", "platform", time.time(),
                self.version, self.trace_id,
            ))  # fmt: skip
            self.dropped = 0


_local = threading.local()


def current() -> Invocation:
    inv: Invocation | None = getattr(_local, "invocation", None)
    if inv is None:
        raise RuntimeError("host import called outside an invocation")
    return inv


class bound:
    """Context manager binding an Invocation to this thread for the duration of a call."""

    def __init__(self, invocation: Invocation) -> None:
        self.invocation = invocation

    def __enter__(self) -> Invocation:
        _local.invocation = self.invocation
        return self.invocation

    def __exit__(self, *exc: object) -> None:
        _local.invocation = None


# --- our interfaces -----------------------------------------------------------------------------


def _log_write(_store: Any, level: Any, message: str) -> None:
    name = level if isinstance(level, str) else LOG_LEVELS[int(level)]
    _logged(current(), name, message)


def _logged(inv: Invocation, name: str, message: str, at: float | None = None) -> None:
    if message[:1] == "\0":  # the SDKs' marks start so
        if name == "error" and uncaught.is_report(message):
            inv.report_uncaught(message)
            return
        if message == awaiting.AWAITING or message == awaiting.ANSWERED:
            inv.uncaught = None
            inv.awaiting = message == awaiting.AWAITING
            return
        if message == awaiting.WAIT_UNTIL_PENDING or message == awaiting.WAIT_UNTIL_SETTLED:
            inv.uncaught = None
            inv.wait_until_pending = message == awaiting.WAIT_UNTIL_PENDING
            return
    inv.uncaught = None  # a report stands only if the trap comes next
    inv.log(name, message, "log", at)


# The native helper's record of a call's host calls (edge/sandbox/native/invoke.c, struct
# event): kind, level, padding, message size, unix ns; then the message.
_EVENT = struct.Struct("<BBxxIq")
_EVENT_LOG, _EVENT_CONFIG = 1, 2


def replay(inv: Invocation, events: bytes, dropped: int) -> None:
    """What the host calls of a call the native helper ran did, in order, as _log_write and
    _config_get do it live: lines with the time they were written, and the end of a standing
    exception report at each read of config. `dropped`: lines the helper did not keep (over
    MAX_LOG_LINES_PER_REQUEST)."""
    at = 0
    while at < len(events):
        kind, level, size, time_ns = _EVENT.unpack_from(events, at)
        at += _EVENT.size
        if kind == _EVENT_LOG:
            message = events[at : at + size].decode("utf-8", errors="replace")
            _logged(inv, LOG_LEVELS[level], message, time_ns / 1e9)
        else:
            inv.uncaught = None
        at += size
    inv.dropped += dropped


HostFunc = Callable[..., Any]


def mapped_log_write(stack: StackMapper, deadline_ticks: int) -> HostFunc:
    """The log import of a function with a source map: _log_write, every line (the SDK's
    uncaught-exception report too) with its bundle positions mapped first (see stackmap). A
    line without any costs two substring searches."""

    def write(store: Any, level: Any, message: str) -> None:
        if not stack.decoded and stack.wants_map(message):
            message = _before_the_map(stack, store, message, deadline_ticks)
        _log_write(store, level, stack.rewrite(message))

    return write


WAIT_FOR_MAP_S = 5.0  # the largest map decodes in ~0.5 s; this is for a starved machine
NOT_MAPPED_NOTE = "\n(stack positions not mapped: the source map is still being decoded)"


def _before_the_map(stack: StackMapper, store: Any, message: str, deadline_ticks: int) -> str:
    """A line that needs the map before it is decoded (the first such of a loaded function,
    and any that come while the decode runs): held until it is, except on the event loop."""
    inv = current()
    if inv.rerunnable:
        # On the event loop nothing waits: the run is ended as over its budget (a deadline of
        # now interrupts the guest at its next call) and run again on a worker thread, which
        # waits. This run's lines are dropped, this one with them.
        stack.start()
        capi.set_epoch_deadline(store._context(), 0)
        return message
    if inv.inline:  # the budget is the whole deadline: no run again, so no wait either
        stack.start()
        return message + NOT_MAPPED_NOTE
    if not stack.wait(WAIT_FOR_MAP_S):
        return message + NOT_MAPPED_NOTE
    # The wait ran on the request's clock, once per loaded function: the request gets its
    # whole deadline again, so it does not become a 504 instead of its exception.
    capi.set_epoch_deadline(store._context(), deadline_ticks)
    return message


def _config_get(_store: Any, key: str) -> str | None:
    inv = current()
    inv.uncaught = None
    return inv.config.get(key)


def _wall_now(_store: Any) -> cm.Record:
    # Frozen at the request's start: a function without the wall_clock grant cannot time
    # anything with it, as in Cloudflare Workers. To the millisecond, as Workers' Date.now():
    # a frozen value times nothing however precise, and log lines and ids want the milliseconds.
    started_ms = int(current().started_unix * 1000)
    rec = cm.Record()
    rec.seconds = started_ms // 1000
    rec.nanoseconds = started_ms % 1000 * 1_000_000
    return rec


def _wall_resolution(_store: Any) -> cm.Record:
    rec = cm.Record()
    rec.seconds = 0
    rec.nanoseconds = 1_000_000
    return rec


class OutputRoute:
    """Where a store's stdout/stderr lines go. wasmtime writes guest stdio from its own I/O
    threads, not the invoking one, so the thread-local cannot be used there: the store's WASI
    config holds this object, and the invocation is set on it for each call.

    Guests write in pieces (CPython writes a traceback's `ValueError`, `: ` and message
    separately), so bytes are held until a newline and each whole line is one log line. What
    is held is logged as a line of its own when the other stream is written to (so lines keep
    the order they were written in) or when the call ends (never carried into the next
    request of a reused instance)."""

    def __init__(self) -> None:
        self.invocation: Invocation | None = None
        self._partial: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def writer(self, source: str) -> Callable[[bytes], None]:
        level = "info" if source == "stdout" else "error"

        def write(data: bytes) -> None:
            inv = self.invocation
            if inv is None:
                return
            with self._lock:
                other = self._take(lambda held: held != source)
                *lines, rest = (self._partial.get(source, b"") + bytes(data)).split(b"\n")
                if len(rest) > MAX_LOG_LINE_BYTES:  # no newline coming: do not hold it all
                    lines.append(rest)
                    rest = b""
                if rest:
                    self._partial[source] = rest
                else:
                    self._partial.pop(source, None)
            _log_held(inv, other)
            for line in lines:
                inv.log(level, _text(line), source)

        return write

    def flush(self) -> None:
        """Ends the call: a last line without its newline is logged now."""
        if not self._partial:  # every request ends here; most hold nothing: no lock
            return
        with self._lock:
            held = self._take(lambda _source: True)
        if self.invocation is not None:
            _log_held(self.invocation, held)

    def _take(self, which: Callable[[str], bool]) -> list[tuple[str, bytes]]:
        # Only held (non-empty) parts are kept, so an empty dict means nothing is held.
        taken = [(s, rest) for s, rest in self._partial.items() if which(s)]
        for s, _rest in taken:
            del self._partial[s]
        return taken


def _log_held(inv: Invocation, held: list[tuple[str, bytes]]) -> None:
    for source, rest in held:
        inv.log("info" if source == "stdout" else "error", _text(rest), source)


def _text(line: bytes) -> str:
    return line.removesuffix(b"\r").decode("utf-8", errors="replace")


def wasi_config(route: OutputRoute) -> WasiConfig:
    """No args, no environment, no preopened directories; stdio becomes log lines."""
    config = WasiConfig()
    config.stdout_custom = route.writer("stdout")
    config.stderr_custom = route.writer("stderr")
    return config


def build_linker(
    engine: Any,
    component: cm.Component,
    imports: list[str],
    caps: Capabilities,
    log_write: HostFunc | None = None,
) -> cm.Linker:
    """`log_write`: the log import's implementation, when not the plain one (mapped_log_write)."""
    linker = cm.Linker(engine)
    linker.allow_shadowing = True
    # WASI p2 from wasmtime: its sockets refuse every address and name lookup by default, and
    # filesystem and environment are empty because wasi_config() grants nothing.
    linker.add_wasip2()
    with linker.root() as root:
        for name in imports:
            iface = name.split("@")[0]
            if iface == "edge:function/types":
                with root.add_instance(name):
                    pass
            elif iface == "edge:function/log":
                with root.add_instance(name) as inst:
                    inst.add_func("write", log_write or _log_write)
            elif iface == "edge:function/config":
                with root.add_instance(name) as inst:
                    inst.add_func("get", _config_get)
            elif iface == "wasi:clocks/wall-clock" and not caps.wall_clock:
                with root.add_instance(name) as inst:
                    inst.add_func("now", _wall_now)
                    inst.add_func("resolution", _wall_resolution)
    if any(name.startswith("wasi:http/") for name in imports):
        # Outbound HTTP (componentize-js imports it for fetch) is never granted yet: its
        # functions become stubs that trap when called. wasmtime's helper also stubs imports
        # that WASI matched only by semver, so it runs only for components that need it.
        linker.allow_shadowing = False
        linker.define_unknown_imports_as_traps(component)
    return linker
