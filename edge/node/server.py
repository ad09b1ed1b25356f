"""Running an ASGI app on Hypercorn, with a clean stop on SIGINT/SIGTERM or a trigger."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config


def hypercorn_config(listen: str) -> Config:
    config = Config()
    config.bind = [listen]
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    # Keep-alive clients (load generators, proxies) reuse connections.
    config.keep_alive_timeout = 75
    return config


async def run(app: Any, listen: str, on_ready: Callable[[], Awaitable[None]] | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not on the main thread (tests run servers in threads): the caller stops us instead.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(serve(app, hypercorn_config(listen), shutdown_trigger=stop.wait))
    if on_ready is not None:
        await on_ready()
    await task
