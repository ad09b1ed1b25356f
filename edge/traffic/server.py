"""The server around `Authority.handle`: UDP on a blocking thread (udp_loop), TCP with 2-byte
framing on asyncio (rare, and it needs timeouts per connection)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from edge.traffic.dns import Authority
from edge.traffic.udp_loop import UdpThread, bind_udp

log = logging.getLogger(__name__)

Clock = Callable[[], float]
MAX_TCP_CONNECTIONS = 256
MAX_QUERIES_PER_CONNECTION = 1000  # then close; the client reconnects (bounds one peer's hold)
BIND_ATTEMPTS = 20


class DnsServer:
    def __init__(
        self, authority: Authority, *, tcp_idle_timeout_s: float, clock: Clock = time.monotonic
    ) -> None:
        self.authority = authority
        self.tcp_idle_timeout_s = tcp_idle_timeout_s
        self.clock = clock
        self.port = 0
        self._udp: list[UdpThread] = []
        self._tcp: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(
        self, host: str, port: int, *, udp_threads: int = 1, reuse_port: bool = False
    ) -> int:
        """Bind UDP and TCP on the same port (port 0: a free one) and return it, with one UDP
        socket and thread per `udp_threads`. `reuse_port`: worker processes will bind more
        UDP sockets on it (`bind_udp(..., reuse_port=True)`)."""
        reuse_port = reuse_port or udp_threads > 1
        last_error: OSError | None = None
        for _ in range(BIND_ATTEMPTS if port == 0 else 1):
            udp = bind_udp(host, port, reuse_port=reuse_port)
            bound = int(udp.getsockname()[1])
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, host, bound)
            except OSError as e:  # the TCP side of a free UDP port can be taken: try another
                udp.close()
                last_error = e
                continue
            socks = [udp]
            try:
                for _ in range(udp_threads - 1):
                    socks.append(bind_udp(host, bound, reuse_port=True))
            except OSError:
                for sock in socks:
                    sock.close()
                self._tcp.close()
                raise
            self._udp = [UdpThread(sock, self.authority, self.clock) for sock in socks]
            self.port = bound
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
        for thread in self._udp:
            await asyncio.to_thread(thread.stop)
        self._udp = []
        if self._tcp is not None:
            self._tcp.close()
            for writer in list(self._writers):  # idle keep-alive clients would hold wait_closed
                writer.close()
            await self._tcp.wait_closed()
            self._tcp = None
