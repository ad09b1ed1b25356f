"""The UDP hot loop (batched and one datagram at a time) and the worker processes that follow
the parent's traffic state, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import dns.edns
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from edge.errors import ConfigError
from edge.traffic import mmsg
from edge.traffic.geodb import GeoDB
from edge.traffic.metrics import DnsStats
from edge.traffic.server import DnsServer
from edge.traffic.udp_loop import UdpLoop, bind_udp
from edge.traffic.workers import WorkerPool

from .conftest import BASE_TOML, MakeConfig, MakeStack, Stack
from .test_dns import LONDON_ECS, addresses, query

TIMEOUT_S = 5.0
EU_WEST = {"192.0.2.11", "192.0.2.12"}
US_EAST = {"192.0.2.1"}


def ask(
    port: int, q: dns.message.Message, sock: socket.socket | None = None
) -> dns.message.Message:
    own = sock is None
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(TIMEOUT_S)
        s.sendto(q.to_wire(), ("127.0.0.1", port))
        return dns.message.from_wire(s.recv(65535))
    finally:
        if own:
            s.close()


@contextlib.contextmanager
def running_loop(stack: Stack, host: str, batched: bool) -> Iterator[int]:
    """A UdpLoop for `stack` on a thread, bound to a free port on `host`; yields the port."""
    if batched and not mmsg.available():
        pytest.skip("recvmmsg/sendmmsg need Linux with glibc")
    sock = bind_udp(host, 0)
    loop = UdpLoop(sock, stack.authority, time.monotonic)
    thread = threading.Thread(target=loop.run, kwargs={"batched": batched}, daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        loop.stop()
        thread.join(TIMEOUT_S)
        sock.close()
    assert not thread.is_alive(), "stop() did not end the loop"


@pytest.fixture(params=["batched", "single"])
def loop_port(request: pytest.FixtureRequest, make_stack: MakeStack) -> Iterator[tuple[int, Stack]]:
    stack = make_stack()
    with running_loop(stack, "127.0.0.1", request.param == "batched") as port:
        yield port, stack


def test_loop_answers_a_burst_with_each_querys_id(loop_port: tuple[int, Stack]) -> None:
    port, _ = loop_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT_S)
        # Sent back to back so the batched loop takes several in one receive; the response
        # in the middle gets no reply, and the replies around it still go out.
        response = dns.message.make_response(query(id=999)).to_wire()
        wires = [query(ecs=LONDON_ECS, id=i).to_wire() for i in range(40)]
        for i, wire in enumerate(wires):
            s.sendto(wire, ("127.0.0.1", port))
            if i == 20:
                s.sendto(response, ("127.0.0.1", port))
        replies = [dns.message.from_wire(s.recv(65535)) for _ in wires]
    assert sorted(r.id for r in replies) == list(range(40))
    assert all(addresses(r) == EU_WEST and r.rcode() == dns.rcode.NOERROR for r in replies)


def test_loop_follows_health_from_another_thread(loop_port: tuple[int, Stack]) -> None:
    port, stack = loop_port
    assert addresses(ask(port, query(ecs=LONDON_ECS))) == EU_WEST
    stack.set_node("eu-west-1", up=False)
    stack.set_node("eu-west-2", up=False)
    assert addresses(ask(port, query(ecs=LONDON_ECS))) == US_EAST


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
@pytest.mark.parametrize("batched", [True, False])
def test_loop_on_ipv6_reports_the_client_address(make_stack: MakeStack, batched: bool) -> None:
    stack = make_stack()
    with (
        running_loop(stack, "::1", batched) as port,
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s,
    ):
        s.settimeout(TIMEOUT_S)
        s.sendto(query(id=77).to_wire(), ("::1", port))
        r = dns.message.from_wire(s.recv(65535))
    # No ECS: the client address steers. ::1 is special-use: the default order, us-east.
    assert r.id == 77 and addresses(r) == US_EAST
    tiers = stack.authority.cache.tiers(stack.state.fingerprint(0.0))
    assert [client for _, client, _ in tiers.exact] == ["::1"]  # as recvfrom reports it


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _start_pool(stack: Stack, geo: GeoDB, count: int) -> WorkerPool:
    pool = WorkerPool(stack.config, geo, stack.state, "127.0.0.1", free_udp_port())
    await pool.start(count)
    return pool


def test_a_worker_process_follows_health_drain_and_reloads(
    make_stack: MakeStack, city_db: GeoDB
) -> None:
    async def scenario() -> None:
        stack = make_stack()
        # The only socket on the port is the worker's: every answer below comes from it.
        pool = await _start_pool(stack, city_db, 1)
        try:
            port = pool.port
            london = query(ecs=dns.edns.ECSOption("81.2.69.142", 32))
            neighbour = query(ecs=dns.edns.ECSOption("81.2.69.143", 32), id=4242)
            assert addresses(await asyncio.to_thread(ask, port, london)) == EU_WEST
            stack.set_node("eu-west-1", up=False)
            stack.set_node("eu-west-2", up=False)
            moved = await asyncio.to_thread(ask, port, neighbour)
            assert moved.id == 4242 and addresses(moved) == US_EAST
            stack.set_node("eu-west-1", up=True)
            stack.set_node("eu-west-2", up=True)
            assert addresses(await asyncio.to_thread(ask, port, london)) == EU_WEST
            stack.state.drains["eu-west"].start(0.0, over_s=0)
            assert addresses(await asyncio.to_thread(ask, port, london)) == US_EAST
            stack.state.set_weight("us-east", 0)
            assert addresses(await asyncio.to_thread(ask, port, london)) == {"192.0.2.21"}
            pool.reload_geodb()  # the same file again: answers stay
            assert addresses(await asyncio.to_thread(ask, port, london)) == {"192.0.2.21"}
        finally:
            processes = [w.process for w in pool.workers]
            await pool.aclose()
        assert processes and all(not p.is_alive() for p in processes)

    asyncio.run(scenario())


def test_a_dead_worker_is_replaced(make_stack: MakeStack, city_db: GeoDB) -> None:
    async def scenario() -> None:
        stack = make_stack()
        pool = await _start_pool(stack, city_db, 1)
        pool.watch()
        try:
            first = pool.workers[0].process
            assert first.pid is not None
            os.kill(first.pid, signal.SIGKILL)
            deadline = time.monotonic() + 60
            # Ready: it said so and was sent the state as it was then; from here on every
            # change reaches it before the change returns (before that, a new worker answers
            # from the state it was spawned with, for the milliseconds until it is ready).
            while pool.workers[0].process is first or not pool.workers[0].ready:
                assert time.monotonic() < deadline, "the dead worker was not replaced"
                await asyncio.sleep(0.1)
            assert pool.workers[0].process.is_alive()
            stack.set_node("eu-west-1", up=False)
            stack.set_node("eu-west-2", up=False)
            reply = await asyncio.to_thread(ask, pool.port, query(ecs=LONDON_ECS))
            assert addresses(reply) == US_EAST
        finally:
            await pool.aclose()

    asyncio.run(scenario())


def test_workers_setting(make_config: MakeConfig) -> None:
    assert make_config().dns.workers == 0
    base = make_config().dns
    assert base.workers == 0

    assert (
        make_config(base=BASE_TOML.replace("ttl_s = 30", "ttl_s = 30\nworkers = 4")).dns.workers
        == 4
    )
    with pytest.raises(ConfigError, match=r"workers must be between 0 and 256"):
        make_config(base=BASE_TOML.replace("ttl_s = 30", "ttl_s = 30\nworkers = -1"))


def test_udp_threads_setting(make_config: MakeConfig) -> None:
    assert make_config().dns.udp_threads == 2
    base = BASE_TOML.replace("ttl_s = 30", "ttl_s = 30\nudp_threads = 0")
    with pytest.raises(ConfigError, match=r"udp_threads must be between 1 and 64, got 0"):
        make_config(base=base)


def test_an_answer_raced_by_a_state_change_is_never_served_after_it(make_stack: MakeStack) -> None:
    """Two UDP threads: one answers from the old state while the other already sees the new
    one. The old answer is filed under the old fingerprint, which no later query reads."""
    stack = make_stack()
    wire = query(ecs=LONDON_ECS).to_wire()
    cache, state = stack.authority.cache, stack.state
    old = cache.tiers(state.fingerprint(0.0))  # the slow thread took its tiers...
    stack.set_node("eu-west-1", up=False)
    stack.set_node("eu-west-2", up=False)
    new = cache.tiers(state.fingerprint(0.0))  # ...the fast one already sees the change
    assert new is not old
    out = stack.authority.handle(wire, "127.0.0.1", "udp", 0.0)
    assert out is not None and addresses(dns.message.from_wire(out)) == US_EAST
    stale = query(ecs=LONDON_ECS, id=5).to_wire()
    outcome = stack.authority.stats.outcome(dns.rdatatype.A, dns.rcode.NOERROR, "eu-west", "udp")
    old.put(wire, "127.0.0.1", "udp", stale, outcome)  # the slow thread files what it computed
    again = stack.authority.handle(wire, "127.0.0.1", "udp", 0.0)
    assert again is not None and addresses(dns.message.from_wire(again)) == US_EAST


def test_server_with_two_udp_threads_answers_on_both_sockets(make_stack: MakeStack) -> None:
    async def scenario() -> None:
        stack = make_stack()
        server = DnsServer(stack.authority, tcp_idle_timeout_s=1.0)
        port = await server.start("127.0.0.1", 0, udp_threads=2)
        try:
            assert len(server._udp) == 2 and all(t.thread.is_alive() for t in server._udp)
            # Clients spread over the two sockets by source port; every one gets its answer.
            for i in range(16):
                r = await asyncio.to_thread(ask, port, query(ecs=LONDON_ECS, id=i))
                assert r.id == i and addresses(r) == EU_WEST
            stack.set_node("eu-west-1", up=False)
            stack.set_node("eu-west-2", up=False)
            for i in range(16):
                r = await asyncio.to_thread(ask, port, query(ecs=LONDON_ECS, id=i))
                assert addresses(r) == US_EAST
            threads = list(server._udp)
        finally:
            await server.close()
        assert not any(t.thread.is_alive() for t in threads)

    asyncio.run(scenario())


def _answered(stats: DnsStats) -> int:
    return sum(count for _, count in stats.totals())


def test_every_udp_thread_counts_its_answers(make_stack: MakeStack) -> None:
    async def scenario() -> None:
        stack = make_stack()
        server = DnsServer(stack.authority, tcp_idle_timeout_s=1.0)
        port = await server.start("127.0.0.1", 0, udp_threads=2)
        try:
            # A new source port per query: the kernel spreads them over both sockets.
            for i in range(40):
                await asyncio.to_thread(ask, port, query(ecs=LONDON_ECS, id=i))
            threads = list(server._udp)
        finally:
            await server.close()
        assert all(sum(t.loop.counts) > 0 for t in threads)  # both threads answered...
        assert _answered(stack.authority.stats) == 40  # ...and each one's answers count
        outcome = ("A", "NOERROR", "eu-west", "udp")
        assert dict(stack.authority.stats.totals()) == {outcome: 40}

    asyncio.run(scenario())


def test_workers_ship_their_counts_to_the_parent(make_stack: MakeStack, city_db: GeoDB) -> None:
    async def scenario() -> None:
        stack = make_stack()
        parent = DnsStats()
        pool = WorkerPool(stack.config, city_db, stack.state, "127.0.0.1", free_udp_port(), parent)
        await pool.start(1)  # the only sockets on the port: every answer is the worker's
        pool.watch()
        try:
            for i in range(30):
                await asyncio.to_thread(ask, pool.port, query(ecs=LONDON_ECS, id=i))
            await asyncio.to_thread(ask, pool.port, query(name="nope.edge.test."))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"\x00\x01", ("127.0.0.1", pool.port))  # too short: dropped
            # Shipped every second by the watcher, without a scrape asking.
            deadline = time.monotonic() + 30
            while _answered(parent) < 31 or parent.dropped() < 1:
                assert time.monotonic() < deadline, f"not shipped: {parent.totals()}"
                await asyncio.sleep(0.1)
            await asyncio.to_thread(pool.ship)  # nothing new: nothing counted twice
        finally:
            await pool.aclose()
        assert dict(parent.totals()) == {
            ("A", "NOERROR", "eu-west", "udp"): 30,
            ("A", "NXDOMAIN", "", "udp"): 1,
        }
        assert parent.dropped() == 1

    asyncio.run(scenario())
