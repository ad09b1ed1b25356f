"""A node's log shipper against a real control plane (Hypercorn on 127.0.0.1): batches arrive
in order, a full buffer's drops arrive as a "N log lines dropped" line, and an unreachable
control plane keeps the lines for the next try."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from edge.node.logbuffer import LogBuffer
from edge.node.logship import LogShipper
from edge.sandbox.host import LogLine
from tests.control.conftest import ControlServer, free_port, run_until
from tests.control.test_api import upload

Start = Callable[..., ControlServer]


def line(n: int, function: str = "default/hello") -> LogLine:
    return LogLine(function, f"req-{n}", "info", f"line {n}", "log", 1000.0 + n, "1",
                   "4bf92f3577b34da6a3ce929d0e0e4736")  # fmt: skip


def shipper(url: str, token: str, buffer: LogBuffer) -> LogShipper:
    return LogShipper(url, token, "eu-1", "eu-west", buffer, 0.2, say=lambda _: None)


def ship_once(s: LogShipper) -> bool:
    async def once() -> bool:
        try:
            return await s.ship_once()
        finally:
            await s.aclose()

    return asyncio.run(once())


def test_lines_and_drop_counts_reach_the_control_plane(start_control: Start) -> None:
    server = start_control()
    admin = server.client(server.admin)
    assert upload(admin).status_code == 201
    buffer = LogBuffer(3)
    ship = shipper(server.url, server.node, buffer)
    for n in range(5):
        ship(line(n))  # the sink: lines 3 and 4 do not fit
    assert ship_once(ship)
    got = admin.get("/v1/functions/hello/logs").json()["lines"]
    assert [(x["message"], x["request_id"], x["node"]) for x in got] == [
        ("line 0", "req-0", "eu-1"), ("line 1", "req-1", "eu-1"), ("line 2", "req-2", "eu-1"),
        ("2 log lines dropped (the node's log buffer was full)", "", "eu-1"),
    ]  # fmt: skip
    assert got[-1]["source"] == "platform" and got[-1]["level"] == "warn"
    assert len(buffer) == 0 and ship.shipped_total == 3


def test_an_unreachable_control_plane_keeps_the_lines_for_later(start_control: Start) -> None:
    buffer = LogBuffer(10)
    dead = shipper(f"http://127.0.0.1:{free_port()}", "x", buffer)
    for n in range(4):
        dead(line(n))
    assert not ship_once(dead)
    assert len(buffer) == 4  # put back, in order
    server = start_control()
    assert upload(server.client(server.admin)).status_code == 201
    assert ship_once(shipper(server.url, server.node, buffer))
    got = server.client(server.admin).get("/v1/functions/hello/logs").json()["lines"]
    assert [x["message"] for x in got] == [f"line {n}" for n in range(4)]


def test_a_refused_batch_is_counted_not_retried(start_control: Start) -> None:
    server = start_control()
    buffer = LogBuffer(10)
    wrong = shipper(server.url, server.admin, buffer)  # an api token: 403
    wrong(line(0))
    assert ship_once(wrong)
    assert len(buffer) == 0
    assert buffer.take(10).dropped == {"default/hello": 1}


def test_shipping_goes_on_after_an_unexpected_failure() -> None:
    """It ended on one: the node served on, and no log line reached the control plane again."""
    said: list[str] = []
    ship = LogShipper("http://127.0.0.1:9", "x", "eu-1", "eu-west", LogBuffer(10), 0.01,
                      say=said.append)
    tries: list[int] = []

    async def ship_once() -> bool:
        tries.append(len(tries))
        if len(tries) == 1:
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return True

    ship.ship_once = ship_once  # type: ignore[method-assign]

    asyncio.run(run_until(ship.run(), lambda: len(tries) >= 2))
    assert tries[:2] == [0, 1]
    assert said == ["error: shipping function logs to the control plane failed: "
                    "UnicodeEncodeError('utf-8', '\\ud800', 0, 1, 'surrogates not allowed')"]
