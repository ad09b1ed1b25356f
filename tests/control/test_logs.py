"""Function logs at the control plane: the per-tenant store (in process) and the endpoints over
real sockets: nodes ship, tenants read only their own functions' lines, follow streams."""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from edge.control.client import ControlClient
from edge.control.errors import ControlUnreachable, RemoteError
from edge.control.logs import LogStore, NodeLine, parse_batch, parse_line
from edge.errors import BadRequest
from tests.control.conftest import ControlServer
from tests.control.test_api import upload

Start = Callable[..., ControlServer]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def raw(function: str, message: str, **kw: Any) -> dict[str, Any]:
    return {"function": function, "version": "1", "request_id": "r1", "trace_id": TRACE,
            "level": "info", "source": "log", "message": message, "time": time.time(), **kw}


def node_line(tenant: str, fn: str, message: str, t: float = 100.0) -> NodeLine:
    return NodeLine(tenant, fn, "1", "r", "", "info", "log", message, t)


def test_each_tenant_keeps_its_own_newest_lines() -> None:
    store = LogStore(per_tenant_lines=5)
    store.add("n1", "eu", [node_line("quiet", "hello", "mine")], {"quiet", "loud"})
    store.add("n1", "eu", [node_line("loud", "hello", f"spam {i}") for i in range(50)],
              {"quiet", "loud"})
    assert [s.line.message for s in store.query("quiet", "hello")] == ["mine"]
    loud = [s.line.message for s in store.query("loud", "hello")]
    assert loud == [f"spam {i}" for i in range(45, 50)]
    # Unknown tenants are not stored at all.
    assert store.add("n1", "eu", [node_line("ghost", "hello", "x")], {"quiet"}) == 0
    assert store.query("ghost", "hello") == []


def test_queries_filter_by_function_time_region_cursor_and_limit() -> None:
    store = LogStore()
    t = {"t"}
    store.add("eu-1", "eu-west", [node_line("t", "a", "old", 10.0), node_line("t", "b", "b")], t)
    store.add("us-1", "us-east", [node_line("t", "a", "new", 20.0)], t)
    store.add("eu-1", "eu-west", [node_line("t", "a", "newest", 30.0)], t)
    assert [s.line.message for s in store.query("t", "a")] == ["old", "new", "newest"]
    assert [s.line.message for s in store.query("t", "a", since_unix=15.0)] == ["new", "newest"]
    assert [s.line.message for s in store.query("t", "a", region="us-east")] == ["new"]
    assert [(s.node, s.region) for s in store.query("t", "a", region="eu-west")] == [
        ("eu-1", "eu-west"), ("eu-1", "eu-west")]
    first = store.query("t", "a")[0]
    assert [s.line.message for s in store.query("t", "a", after_seq=first.seq)] == ["new", "newest"]
    assert [s.line.message for s in store.query("t", "a", limit=1)] == ["newest"]
    assert store.query("t", "a", limit=0) == []


@pytest.mark.parametrize("change", [
    {"function": "hello"},  # no tenant
    {"function": "t/Bad Name"},
    {"level": "loud"},
    {"source": "kernel"},
    {"trace_id": "XYZ"},
    {"request_id": "has spaces"},
    {"time": "yesterday"},
    {"time": True},
    {"message": 5},
])  # fmt: skip
def test_malformed_lines_are_refused_one_by_one(change: dict[str, Any]) -> None:
    assert parse_line(raw("t/hello", "ok")) is not None
    assert parse_line({**raw("t/hello", "ok"), **change}) is None
    _, _, valid, bad = parse_batch({"node_id": "n", "region": "r",
                                    "lines": [raw("t/hello", "ok"), {**raw("t/x", "x"), **change},
                                              "not an object"]})  # fmt: skip
    assert (len(valid), bad) == (1, 2)


def test_a_long_message_is_cut_and_a_bad_batch_is_a_bad_request() -> None:
    line = parse_line(raw("t/hello", "x" * 20_000))
    assert line is not None and len(line.message) < 9000 and line.message.endswith("(truncated)")
    for body in ({}, {"node_id": "n", "region": "r"}, {"node_id": "", "region": "r", "lines": []},
                 {"node_id": "n", "region": "r", "lines": [{}] * 5001}):
        with pytest.raises(BadRequest):
            parse_batch(body)


def ship(server: ControlServer, lines: list[dict[str, Any]], region: str = "eu-west") -> Any:
    r = server.client(server.node).post(
        "/v1/node/logs", json={"node_id": f"{region}-1", "region": region, "lines": lines}
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_tenants_read_only_their_own_functions_lines(start_control: Start) -> None:
    server = start_control()
    admin = server.client(server.admin)
    assert upload(admin).status_code == 201  # default/hello
    other_token = server.token("other")
    other = server.client(other_token)
    assert upload(other, "hello").status_code == 201  # other/hello, same name
    assert upload(other, "private").status_code == 201
    got = ship(server, [raw("default/hello", "default's line"),
                        raw("other/hello", "other's line"),
                        raw("other/private", "secret"),
                        raw("nobody/hello", "no such tenant"),
                        {"function": "broken"}])  # fmt: skip
    assert got == {"kept": 3, "rejected": 2}

    mine = admin.get("/v1/functions/hello/logs").json()["lines"]
    assert [x["message"] for x in mine] == ["default's line"]
    assert mine[0] | {"seq": 0, "time": 0} == {
        "seq": 0, "time": 0, "function": "hello", "version": "1", "region": "eu-west",
        "node": "eu-west-1", "request_id": "r1", "trace_id": TRACE, "level": "info",
        "source": "log", "message": "default's line"}  # fmt: skip
    assert [x["message"] for x in other.get("/v1/functions/hello/logs").json()["lines"]] == [
        "other's line"]
    # Another tenant's function is exactly as missing as one that does not exist.
    for path in ("/v1/functions/private/logs", "/v1/functions/nothere/logs"):
        r = admin.get(path)
        assert r.status_code == 404 and r.json()["error"] == "not_found"
    with ControlClient(server.url, server.admin) as client, pytest.raises(RemoteError) as e:
        list(client.follow_logs("private"))
    assert e.value.status == 404


def test_log_endpoints_check_token_kind_and_query(start_control: Start) -> None:
    server = start_control()
    admin = server.client(server.admin)
    assert upload(admin).status_code == 201
    assert admin.post("/v1/node/logs", json={}).status_code == 403
    assert server.client(server.node).get("/v1/functions/hello/logs").status_code == 403
    write_only = server.client(server.token("default", ("deploy",)))
    assert write_only.get("/v1/functions/hello/logs").status_code == 403
    assert httpx.get(server.url + "/v1/functions/hello/logs").status_code == 401
    for query in ("since=yesterday", "after=x", "region=Bad_Region", "limit=ten"):
        r = admin.get(f"/v1/functions/hello/logs?{query}")
        assert r.status_code == 400 and r.json()["error"] == "bad_request", query
    assert server.client(server.node).post("/v1/node/logs", content=b"[").status_code == 400
    # A batch declared too big is refused before its body is read.
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /v1/node/logs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
                     f"{server.node}\r\ncontent-length: 99999999\r\n\r\n".encode())  # fmt: skip
        assert sock.recv(64).startswith(b"HTTP/1.1 413")
    ship(server, [raw("default/hello", "eu")], "eu-west")
    ship(server, [raw("default/hello", "us")], "us-east")
    ship(server, [raw("default/hello", "old", time=time.time() - 3600)], "us-east")
    by = admin.get("/v1/functions/hello/logs", params={"region": "us-east", "since": "10m"})
    assert [x["message"] for x in by.json()["lines"]] == ["us"]


def test_follow_streams_lines_as_nodes_ship_them(start_control: Start) -> None:
    server = start_control()
    admin = server.client(server.admin)
    assert upload(admin).status_code == 201
    ship(server, [raw("default/hello", "before")])
    got: queue.Queue[dict[str, Any]] = queue.Queue()
    client = ControlClient(server.url, server.admin)

    def follow() -> None:
        try:
            for line in client.follow_logs("hello"):
                got.put(line)
        except ControlUnreachable:
            pass  # closed under it: how the test ends the stream

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert got.get(timeout=10)["message"] == "before"  # the backlog first
    for i in range(3):
        ship(server, [raw("default/hello", f"live {i}"), raw("default/other", "not this")])
        line = got.get(timeout=5)
        assert line["message"] == f"live {i}"
    client.close()
    reader.join(10)
    assert got.empty()  # "not this" (another function) never came
