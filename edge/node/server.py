"""Running an ASGI app on Hypercorn, with a clean stop on SIGINT/SIGTERM or a trigger."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from edge.errors import ListenFailed

BACKLOG = 1024


def hypercorn_config(bind: str) -> Config:
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    config.backlog = BACKLOG
    # Keep-alive clients (load generators, proxies) reuse connections.
    config.keep_alive_timeout = 75
    return config


def listening_socket(listen: str) -> socket.socket:
    """A bound, listening TCP socket for HOST:PORT ([v6]:PORT), or ListenFailed.

    Bound here rather than by Hypercorn so that a taken port is a typed error at once, and so
    that `on_ready` runs only once connections are accepted (the kernel queues them until
    Hypercorn's accept loop starts)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        raise ListenFailed(f"cannot listen on {listen}: {e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, int(port)))
        sock.listen(BACKLOG)
    except (OSError, ValueError, OverflowError) as e:  # taken, privileged, not ours, no port
        sock.close()
        raise ListenFailed(f"cannot listen on {listen}: {e}") from None
    return sock


def drop_cancelled(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The servers' loop exception handler: the default one, less cancelled tasks."""
    # Python 3.11's asyncio.streams asks a finished connection task for its exception, which
    # raises CancelledError for one Hypercorn cancelled at shutdown (a request still in flight):
    # a traceback per such connection on every clean stop (fixed in Python 3.12).
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


async def run(
    app: Any,
    listen: str,
    on_ready: Callable[[], Awaitable[None]] | None = None,
    grace_s: Callable[[], float] | None = None,
) -> None:
    """`grace_s`: asked at the stop, how long requests in flight may still take (a node: its
    longest function deadline and a margin); Hypercorn waits that long, at least its default
    3 s, before it cancels them and answers 500."""
    sock = listening_socket(listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if loop.get_exception_handler() is None:  # one a caller set stays
        loop.set_exception_handler(drop_cancelled)
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not on the main thread (tests run servers in threads): the caller stops us instead.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    # Hypercorn takes the descriptor over (and closes it at shutdown).
    config = hypercorn_config(f"fd://{sock.detach()}")

    async def stopping() -> None:
        await stop.wait()
        if grace_s is not None:  # Hypercorn reads it once the trigger returns
            config.graceful_timeout = max(config.graceful_timeout, grace_s())

    task = asyncio.create_task(serve(app, config, shutdown_trigger=stopping))
    if on_ready is not None:
        await on_ready()
    await task
