"""UDP worker processes: more cores for the hot path, one traffic state.

`edge dns` (the parent) owns health checks, drain following, TCP and signals, and answers UDP
itself (`udp_threads` sockets, one udp_loop thread each). With `workers = N` it starts N - 1
processes, each with as many sockets and threads of its own, all bound to the same port with
SO_REUSEPORT: the kernel spreads clients over the sockets by address and port. A worker has its
own Authority, Steerer and GeoDB (the .mmdb is mapped, so its pages are shared) and follows the
parent's TrafficState through a pipe: a snapshot before it answers anything, then one after
every change (`TrafficState.listeners`), applied by a thread while the main thread answers. The
parent waits for each worker's ack (a bounded wait), so once a change is made in the parent
every worker answers with it, as the parent's own UDP thread does. SIGHUP's geo database reload
is forwarded the same way, and so is a reloaded traffic.toml (a `ReloadPlan`, sent before the
parent serves it; a worker started later is spawned with it). A worker stops when its pipe
closes, so none outlives the parent, and the parent starts a new one when a worker dies.

Metrics: each worker counts in its own DnsStats; the parent asks for what it counted since the
last time (`("stats", None)`, answered with a shipment instead of an ack) every second and
before every scrape, and adds it to its own DnsStats, so /metrics counts every process. A
worker that dies loses at most its last second of counts; counters never go back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import ConfigError
from edge.traffic.dns import Authority
from edge.traffic.geodb import GeoDB
from edge.traffic.metrics import DnsStats, Shipment
from edge.traffic.regions import TrafficConfig
from edge.traffic.reload import ReloadPlan, install
from edge.traffic.state import StateSnapshot, TrafficState
from edge.traffic.steering import Steerer
from edge.traffic.udp_loop import UdpLoop, bind_udp

log = logging.getLogger(__name__)

# Spawn, not fork: the parent has an event loop and threads by the time workers start.
CONTEXT = multiprocessing.get_context("spawn")
STOP_TIMEOUT_S = 5.0
WATCH_INTERVAL_S = 1.0
READY_TIMEOUT_S = 60.0  # a fresh interpreter importing dnspython on a busy machine
ACK_TIMEOUT_S = 1.0  # a worker that does not ack in this long is busy or dying: go on
READY = ("ready", None)
ACK = ("ack", None)

STATS = ("stats", None)
# To a worker: ("state", StateSnapshot) | ("geodb", path) | ("config", ReloadPlan) | STATS.
# From one: READY, ACK, or ("stats", Shipment) answering STATS.
Message = tuple[str, object]


def default_workers() -> int:
    """One per CPU this process may run on (taskset and cgroup cpusets included)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def worker_main(
    config: TrafficConfig,
    geo_path: str,
    socks: list[socket.socket],
    conn: multiprocessing.connection.Connection,
) -> None:
    # The parent decides when to stop and reload; a terminal's Ctrl-C reaches the whole group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with GeoDB(Path(geo_path)) as geo:
        state = TrafficState(config)
        authority = Authority(config, Steerer(config.regions, config.steering, geo), state)
        state.region_listeners.append(authority.set_regions)  # the parent's map, via `apply`
        try:
            first = conn.recv()
        except (EOFError, OSError):
            return
        _apply(first, state, geo, authority)
        conn.send(READY)
        loops = [UdpLoop(sock, authority, time.monotonic) for sock in socks]
        threading.Thread(
            target=_follow,
            args=(conn, state, geo, authority, loops),
            name="dns-state",
            daemon=True,
        ).start()
        others = [threading.Thread(target=loop.run, daemon=True) for loop in loops[1:]]
        for thread in others:
            thread.start()
        loops[0].run()
        for thread in others:
            thread.join(STOP_TIMEOUT_S)
        for sock in socks:
            sock.close()


def _apply(message: Message, state: TrafficState, geo: GeoDB, authority: Authority) -> None:
    kind, body = message
    if kind == "state" and isinstance(body, StateSnapshot):
        state.apply(body)
    elif kind == "config" and isinstance(body, ReloadPlan):
        install(body, state, authority, geo)
    elif kind == "geodb" and isinstance(body, str):
        try:
            geo.reload(Path(body))
        except ConfigError as e:  # the parent loaded it; keep serving the previous one
            log.error("dns worker: geoip reload failed: %s", e.message)
            return
        authority.steerer.forget()
        state.invalidate()


def _follow(
    conn: multiprocessing.connection.Connection,
    state: TrafficState,
    geo: GeoDB,
    authority: Authority,
    loops: list[UdpLoop],
) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message == STATS:
            reply: Message = ("stats", authority.stats.since())
        else:
            _apply(message, state, geo, authority)
            reply = ACK
        try:
            conn.send(reply)
        except OSError:
            break
    for loop in loops:  # the parent is gone or stopping: so is this process
        loop.stop()


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    ready: bool = False
    # One exchange (message, ack) at a time: pushes come from the event loop, the first
    # snapshot after READY from the thread that waited for it.
    lock: threading.Lock = field(default_factory=threading.Lock)


class WorkerPool:
    """`count` worker processes answering UDP on (host, port) from `state`'s snapshots."""

    def __init__(
        self,
        config: TrafficConfig,
        geo: GeoDB,
        state: TrafficState,
        host: str,
        port: int,
        stats: DnsStats | None = None,
    ) -> None:
        """`stats`: where the workers' counts go (the parent Authority's); None: not asked."""
        self.threads = config.dns.udp_threads
        self.stats = stats
        self.config = config
        self.geo = geo
        self.state = state
        self.host = host
        self.port = port
        self.workers: list[_Worker] = []
        self._watch: asyncio.Task[None] | None = None
        state.listeners.append(self._push_state)

    async def start(self, count: int) -> None:
        """Start `count` workers and wait until each has the state and is answering: its
        socket takes a share of the clients from the moment it is bound."""
        for _ in range(count):
            self.workers.append(self._spawn())
        for worker in self.workers:
            await asyncio.to_thread(self._wait_ready, worker)

    def _wait_ready(self, worker: _Worker) -> None:
        try:
            ready = worker.conn.poll(READY_TIMEOUT_S) and worker.conn.recv() == READY
        except (EOFError, OSError):
            ready = False
        if not ready:
            raise OSError(f"UDP worker {worker.process.pid} did not start")
        worker.ready = True
        # Changes made while it started were not pushed to it: send the state as it is now.
        self._call(worker, lambda: ("state", self.state.snapshot()))

    def _spawn(self) -> _Worker:
        socks: list[socket.socket] = []
        receive, send = CONTEXT.Pipe()
        try:
            for _ in range(self.threads):
                socks.append(bind_udp(self.host, self.port, reuse_port=True))
            process = CONTEXT.Process(
                target=worker_main,
                args=(self.config, str(self.geo.path), socks, receive),
                name="edge-dns-udp",
                daemon=True,
            )
            process.start()
        finally:
            for sock in socks:  # the worker has its own; ours would take a share of clients
                sock.close()
            receive.close()
        worker = _Worker(process, send)
        try:
            send.send(("state", self.state.snapshot()))  # answered by READY, not ACK
        except OSError as e:
            log.error("dns: cannot reach UDP worker %s: %s", process.pid, e)
        return worker

    def _call(self, worker: _Worker, message: Callable[[], Message]) -> None:
        """Send (the message made under the lock, so the newest state goes last) and wait
        for its answer (an ack, or a shipment of counts), bounded."""
        conn = worker.conn
        with worker.lock:
            try:
                while conn.poll(0):  # late answers to an exchange that timed out
                    self._take(conn.recv())
                conn.send(message())
                if conn.poll(ACK_TIMEOUT_S):
                    self._take(conn.recv())
                else:
                    log.warning("dns: UDP worker %s did not ack in time", worker.process.pid)
            except (EOFError, OSError) as e:  # a dead worker: the watcher replaces it
                log.debug("dns: cannot reach UDP worker %s: %s", worker.process.pid, e)

    def _take(self, answer: Message) -> None:
        kind, body = answer
        if kind == "stats" and isinstance(body, list) and self.stats is not None:
            shipment: Shipment = body
            self.stats.add(shipment)

    def ship(self) -> None:
        """Bring in what every worker counted since the last time (blocking: not on the loop)."""
        if self.stats is None:
            return
        for worker in list(self.workers):
            if worker.ready:
                self._call(worker, lambda: STATS)

    def _push_state(self) -> None:
        for worker in self.workers:
            if worker.ready:
                self._call(worker, lambda: ("state", self.state.snapshot()))

    def reload_config(self, plan: ReloadPlan) -> None:
        self.config = plan.config  # what a worker started from now on begins with
        for worker in self.workers:
            if worker.ready:
                self._call(worker, lambda: ("config", plan))

    def reload_geodb(self) -> None:
        for worker in self.workers:
            if worker.ready:
                self._call(worker, lambda: ("geodb", str(self.geo.path)))

    def watch(self) -> None:
        """Replace workers that die, from the running event loop, until `aclose`."""
        self._watch = asyncio.create_task(self._watch_loop(), name="dns-workers")

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            # Often enough that a dying worker loses little; the pipe carries a few bytes.
            if self.workers:
                await asyncio.to_thread(self.ship)
            for i, worker in enumerate(self.workers):
                if not worker.process.is_alive():
                    log.error(
                        "dns: UDP worker %s exited (%s); starting another",
                        worker.process.pid, worker.process.exitcode,
                    )  # fmt: skip
                    worker.conn.close()
                    self.workers[i] = self._spawn()
                    try:
                        await asyncio.to_thread(self._wait_ready, self.workers[i])
                    except OSError as e:
                        log.error("dns: %s", e)

    async def aclose(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._push_state in self.state.listeners:
            self.state.listeners.remove(self._push_state)
        for worker in self.workers:
            worker.conn.close()  # the worker's follower sees EOF and stops its UDP loop
        await asyncio.to_thread(self._join)
        self.workers = []

    def _join(self) -> None:
        for worker in self.workers:
            worker.process.join(STOP_TIMEOUT_S)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(STOP_TIMEOUT_S)
