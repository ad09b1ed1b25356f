"""Thin asyncio shells around `Authority.handle`: UDP datagrams and TCP with 2-byte framing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import cast

from edge.traffic.dns import Authority

log = logging.getLogger(__name__)

Clock = Callable[[], float]
MAX_TCP_CONNECTIONS = 256
MAX_QUERIES_PER_CONNECTION = 1000  # then close; the client reconnects (bounds one peer's hold)
BIND_ATTEMPTS = 20


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, authority: Authority, clock: Clock) -> None:
        self.authority = authority
        self.clock = clock
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            reply = self.authority.handle(data, str(addr[0]), "udp", self.clock())
        except Exception:
            # handle() promises not to raise; if a bug makes it, one query is lost, not the server.
            log.exception("dns: handler failed on a UDP query from %s", addr[0])
            return
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that went away: nothing to do.
        log.debug("dns: udp error %s", exc)


class DnsServer:
    def __init__(
        self, authority: Authority, *, tcp_idle_timeout_s: float, clock: Clock = time.monotonic
    ) -> None:
        self.authority = authority
        self.tcp_idle_timeout_s = tcp_idle_timeout_s
        self.clock = clock
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int) -> int:
        """Bind UDP and TCP on the same port (port 0: a free one) and return it."""
        loop = asyncio.get_running_loop()
        last_error: OSError | None = None
        for _ in range(BIND_ATTEMPTS if port == 0 else 1):
            udp, _proto = await loop.create_datagram_endpoint(
                lambda: _Udp(self.authority, self.clock), local_addr=(host, port)
            )
            bound = int(udp.get_extra_info("sockname")[1])
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, host, bound)
            except OSError as e:  # the TCP side of a free UDP port can be taken: try another
                udp.close()
                last_error = e
                continue
            self._udp, self.port = udp, bound
            return bound
        raise OSError(f"dns: could not bind UDP and TCP on {host}:{port}: {last_error}")

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        addr = str(peer[0]) if isinstance(peer, tuple) else ""
        self._writers.add(writer)
        try:
            if len(self._writers) > MAX_TCP_CONNECTIONS:
                return
            for _ in range(MAX_QUERIES_PER_CONNECTION):
                try:
                    async with asyncio.timeout(self.tcp_idle_timeout_s):
                        size = int.from_bytes(await reader.readexactly(2), "big")
                        wire = await reader.readexactly(size)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                try:
                    reply = self.authority.handle(wire, addr, "tcp", self.clock())
                except Exception:
                    log.exception("dns: handler failed on a TCP query from %s", addr)
                    return
                if reply is None:
                    return  # nothing we can answer on this stream; closing tells the client
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for writer in list(self._writers):  # idle keep-alive clients would hold wait_closed
                writer.close()
            await self._tcp.wait_closed()
            self._tcp = None
