"""The DNS server and health checker over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import http.server
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from edge.traffic.health_checker import HealthChecker
from edge.traffic.server import DnsServer

from .conftest import BASE_TOML, MakeStack, Stack
from .test_dns import BIG_REGION, LONDON_ECS, addresses, ecs_of, query

TIMEOUT_S = 3.0


class Running:
    """A DnsServer (and optionally a HealthChecker) on its own event loop in a thread."""

    def __init__(self, stack: Stack, health: bool = False) -> None:
        self.stack = stack
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = DnsServer(
            stack.authority, tcp_idle_timeout_s=stack.config.dns.tcp_idle_timeout_s
        )
        self.checker: HealthChecker | None = None
        self.port = self._run(self._start(health))

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT_S)

    async def _start(self, health: bool) -> int:
        port = await self.server.start("127.0.0.1", 0)
        if health:
            self.checker = HealthChecker(self.stack.state)
            self.checker.start()
        return port

    async def _stop(self) -> None:
        if self.checker is not None:
            await self.checker.aclose()
        await self.server.close()

    def close(self) -> None:
        self._run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT_S)
        self.loop.close()

    def udp(self, q: dns.message.Message) -> dns.message.Message:
        return dns.query.udp(q, "127.0.0.1", port=self.port, timeout=TIMEOUT_S)

    def tcp(self, q: dns.message.Message) -> dns.message.Message:
        return dns.query.tcp(q, "127.0.0.1", port=self.port, timeout=TIMEOUT_S)


@pytest.fixture
def serve(make_stack: MakeStack) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def start(extra: str = "", base: str = BASE_TOML, health: bool = False) -> Running:
        running.append(Running(make_stack(extra, base), health))
        return running[-1]

    yield start
    for r in running:
        r.close()


def test_udp_and_tcp_answers_with_ecs(serve: Callable[..., Running]) -> None:
    server = serve()
    for ask in (server.udp, server.tcp):
        r = ask(query(ecs=LONDON_ECS))
        assert addresses(r) == {"192.0.2.11", "192.0.2.12"} and ecs_of(r).scopelen == 31
        r = ask(query(rdtype="AAAA", ecs=dns.edns.ECSOption("2001:218::", 32)))
        assert addresses(r) == {"2001:db8::21"}


def test_truncated_udp_then_tcp_retry(serve: Callable[..., Running]) -> None:
    server = serve(base=BASE_TOML + BIG_REGION)
    for r_name in ("eu-west", "ap-south", "us-east"):
        for node in server.stack.config.region(r_name).nodes:
            server.stack.set_node(node.name, up=False)
    q = query(rdtype="AAAA")
    assert server.udp(q).flags & dns.flags.TC
    r, used_tcp = dns.query.udp_with_fallback(q, "127.0.0.1", port=server.port, timeout=TIMEOUT_S)
    assert used_tcp and len(addresses(r)) == 80


def test_errors_over_the_wire(serve: Callable[..., Running]) -> None:
    server = serve()
    r = server.udp(query("example.com."))
    assert r.rcode() == dns.rcode.REFUSED and not r.flags & dns.flags.AA
    r = server.udp(query("nope.edge.test."))
    assert r.rcode() == dns.rcode.NXDOMAIN and r.authority[0].rdtype == dns.rdatatype.SOA
    r = server.tcp(query("www.edge.test.", "TXT"))
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.authority
    r = server.udp(query(use_edns=1))
    assert r.rcode() == dns.rcode.BADVERS


def test_tcp_several_queries_per_connection_then_idle_close(serve: Callable[..., Running]) -> None:
    server = serve(base=BASE_TOML.replace("ttl_s = 30", "ttl_s = 30\ntcp_idle_timeout_s = 0.3"))
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
        wires = [query().to_wire(), query("edge.test.", "SOA").to_wire()]
        sock.sendall(b"".join(struct.pack("!H", len(w)) + w for w in wires))  # pipelined
        reader = sock.makefile("rb")
        for w in wires:
            size = struct.unpack("!H", reader.read(2))[0]
            r = dns.message.from_wire(reader.read(size))
            assert r.id == struct.unpack("!H", w[:2])[0] and r.rcode() == dns.rcode.NOERROR
        started = time.monotonic()
        assert reader.read(1) == b""  # closed by the server once idle
        assert time.monotonic() - started < TIMEOUT_S


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig not installed")
def test_dig(serve: Callable[..., Running]) -> None:
    server = serve()
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(server.port), "www.edge.test", "A",
         "+subnet=81.2.69.142/32", "+tries=1", "+time=2"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    assert "192.0.2.11" in out and "status: NOERROR" in out and "CLIENT-SUBNET" in out


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


class HealthServer:
    def __init__(self) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/healthz"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(TIMEOUT_S)


def test_a_node_that_stops_answering_leaves_the_answers(serve: Callable[..., Running]) -> None:
    stable, flaky = HealthServer(), HealthServer()
    try:
        head, eu, tail = (
            BASE_TOML.partition('name = "eu-west"')[0],
            *BASE_TOML.partition('name = "eu-west"')[1:],
        )
        eu_part, ap, rest = tail.partition('name = "ap-south"')
        old = "http://127.0.0.1:9/healthz"
        base = (
            head.replace(old, stable.url) + eu + eu_part.replace(old, flaky.url)
            + ap + rest.replace(old, stable.url)
        )  # fmt: skip
        server = serve(base=base, health=True)
        interval, fall = server.stack.config.health.interval_s, server.stack.config.health.fall
        # Healthy: London goes to eu-west.
        deadline = time.monotonic() + TIMEOUT_S
        while server.stack.state.health["eu-west-1"].state.value != "up":
            assert time.monotonic() < deadline
            time.sleep(interval)
        assert addresses(server.udp(query(ecs=LONDON_ECS))) == {"192.0.2.11", "192.0.2.12"}
        flaky.stop()
        stopped = time.monotonic()
        while addresses(server.udp(query(ecs=LONDON_ECS))) != {"192.0.2.1"}:
            assert time.monotonic() - stopped < TIMEOUT_S, "eu-west never left the answers"
            time.sleep(interval / 2)
        # fall failures at `interval` apart, plus scheduling slack.
        assert time.monotonic() - stopped < (fall + 2) * interval + 1.0
    finally:
        stable.stop()
        if flaky.thread.is_alive():
            flaky.stop()
