"""The UDP hot path: a blocking receive/answer/send loop on one socket, no event loop.

An asyncio datagram protocol costs several microseconds of loop machinery per packet, more
than a wire-cache hit itself, and so do Python's one-system-call-per-datagram recvfrom and
sendto. Where it can (Linux), the loop takes every waiting datagram with one recvmmsg and sends
the replies with one sendmmsg (`mmsg`); elsewhere it uses recvfrom/sendto. Each loop runs on
its own thread (the server process's) or as the main loop of a worker process.
`Authority.handle` never raises by contract; a bug that makes it loses one query, not the loop.
`stop` wakes the blocked receive by shutting the socket down (Linux wakes every blocked reader).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable

from edge.traffic import mmsg
from edge.traffic.dns import Authority

log = logging.getLogger(__name__)

# Queries are small, but a datagram is read whole or cut: room for the largest one.
RECV_BYTES = 65535


class UdpLoop:
    def __init__(
        self, sock: socket.socket, authority: Authority, clock: Callable[[], float]
    ) -> None:
        self.sock = sock
        self.authority = authority
        self.clock = clock
        self.stopped = False
        self.counts = authority.stats.tally()  # this loop's alone: no increment races another

    def run(self, *, batched: bool | None = None) -> None:
        """Answer datagrams until `stop` (or the socket closes). `batched`: force a path."""
        if batched if batched is not None else mmsg.available():
            self._run_batched()
        else:
            self._run_single()

    def stop(self) -> None:
        self.stopped = True
        with contextlib.suppress(OSError):  # ENOTCONN on an unconnected socket, after waking
            self.sock.shutdown(socket.SHUT_RDWR)

    def _answer(self, data: bytes, client: str, now: float) -> bytes | None:
        try:
            return self.authority.handle(data, client, "udp", now, self.counts)
        except Exception:
            log.exception("dns: handler failed on a UDP query from %s", client)
            return None

    def _run_batched(self) -> None:
        batch = mmsg.Batch(self.sock)
        answer, clock = self._answer, self.clock
        datagram, client, stage, send = batch.datagram, batch.client, batch.stage, batch.send
        while not self.stopped:
            try:
                n = batch.recv()
            except OSError as e:
                if self.stopped or self.sock.fileno() < 0:
                    return
                log.debug("dns: udp receive error %s", e)
                continue
            if self.stopped:
                return
            now = clock()
            first = 0  # replies staged in slots first..i-1 go out together
            for i in range(n):
                reply = answer(datagram(i), client(i), now)
                if reply is None or len(reply) > mmsg.SLOT_BYTES:
                    send(first, i)
                    first = i + 1
                else:
                    stage(i, reply)
            send(first, n)

    def _run_single(self) -> None:
        recvfrom, sendto = self.sock.recvfrom, self.sock.sendto
        answer, clock = self._answer, self.clock
        while not self.stopped:
            try:
                data, addr = recvfrom(RECV_BYTES)
            except OSError as e:
                if self.stopped or self.sock.fileno() < 0:
                    return
                log.debug("dns: udp receive error %s", e)
                continue
            if addr is None or self.stopped:
                return  # shut down
            reply = answer(data, addr[0], clock())
            if reply is not None:
                try:
                    sendto(reply, addr)
                except OSError as e:  # a full send buffer or an address we cannot reach
                    log.debug("dns: udp send to %s failed: %s", addr[0], e)


def bind_udp(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A UDP socket bound to (host, port); `reuse_port` lets worker sockets share the port,
    the kernel spreading clients over them by address and port."""
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


class UdpThread:
    """A `UdpLoop` on a daemon thread of this process."""

    def __init__(
        self, sock: socket.socket, authority: Authority, clock: Callable[[], float]
    ) -> None:
        self.sock = sock
        self.loop = UdpLoop(sock, authority, clock)
        self.thread = threading.Thread(target=self.loop.run, name="dns-udp", daemon=True)
        self.thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self.loop.stop()
        self.thread.join(timeout_s)
        self.sock.close()
