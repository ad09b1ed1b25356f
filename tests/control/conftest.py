"""Factories for the control plane: stores with a frozen clock, a Hypercorn server in a thread
on a free 127.0.0.1 port, and tiny manifests and components."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config

from edge.control.api import ControlSettings, create_app
from edge.control.bootstrap import bootstrap
from edge.control.records import SCOPES
from edge.control.sealing import KEY_FILE
from edge.control.signing import Signer
from edge.control.store import Store
from edge.sandbox.wasm_decode import encode_uleb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_until(loop: Coroutine[Any, Any, None], done: Callable[[], bool]) -> None:
    """Runs `loop` (a node's loop: it never ends by itself) until `done()`, then cancels it.
    A loop that ended before raises what it ended with, here."""
    task = asyncio.create_task(loop)
    for _ in range(1000):  # 10 s: only a loop that stopped gets near it
        await asyncio.sleep(0.01)
        if done() or task.done():
            break
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def manifest(name: str = "hello") -> dict[str, Any]:
    return {"function": {"name": name, "lang": "c"}, "config": {"greeting": "hi"}}


def component(tag: str | bytes) -> bytes:
    """Not a real component, but framed as one (the control plane checks no more): the
    component preamble and one custom section named "tag" holding `tag`."""
    payload = b"\x03tag" + (tag.encode() if isinstance(tag, str) else tag)
    return b"\x00asm\x0d\x00\x01\x00\x00" + encode_uleb(len(payload)) + payload


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_store(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., Store]]:
    stores: list[Store] = []

    def make(data_dir: Path | None = None) -> Store:
        store = Store(data_dir or tmp_path / "data", now=clock)
        stores.append(store)
        return store

    yield make
    for s in stores:
        s.close()


def add_version(store: Store, tenant_id: int, name: str = "hello", tag: str = "") -> int:
    data = component(tag or f"{name}-{time.monotonic_ns()}")
    sha = store.blobs.put(data)
    v = store.create_version(
        tenant_id, name, sha256=sha, size_bytes=len(data), manifest=manifest(name),
        message=f"v {tag}", author="test",
    )
    return v.number


@dataclass
class ControlServer:
    url: str
    store: Store
    signer: Signer
    admin: str
    node: str
    _stop: Callable[[], None]
    clients: list[httpx.Client] = field(default_factory=list)

    def token(self, tenant: str, scopes: tuple[str, ...] = SCOPES) -> str:
        """A token for `tenant` (created if new) with just `scopes`."""
        if tenant not in self.store.tenant_names():
            self.store.create_tenant(tenant)
        return self.store.create_token(tenant=tenant, kind="api", scopes=scopes, label=tenant)

    def client(self, token: str | None) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self.clients.append(client)
        return client


@pytest.fixture
def start_control(tmp_path: Path) -> Iterator[Callable[..., ControlServer]]:
    """start_control(settings=...) runs the API on Hypercorn in a thread, on real sockets."""
    servers: list[ControlServer] = []

    def start(settings: ControlSettings | None = None) -> ControlServer:
        data = tmp_path / f"control-{len(servers)}"
        store = Store(data)
        boot = bootstrap(store, data)
        assert boot.tokens is not None
        app = create_app(store, boot.signer, settings, secrets_key_file=data / KEY_FILE)
        port = free_port()
        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 1
        # Longer than any pause in a test: an idle close racing a reused connection is a flake.
        config.keep_alive_timeout = 120
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
            loop.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def halt() -> None:
            loop.call_soon_threadsafe(stop.set)
            thread.join(10)
            store.close()

        server = ControlServer(f"http://127.0.0.1:{port}", store, boot.signer,
                               boot.tokens["admin"], boot.tokens["node"], halt)
        servers.append(server)
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(server.url + "/v1/public-key", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        return server

    yield start
    for s in servers:
        for c in s.clients:
            c.close()
        s._stop()
