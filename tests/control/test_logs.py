"""Function logs at the control plane: the per-tenant store (in process) and the endpoints over
real sockets: nodes ship, tenants read only their own functions' lines, follow streams."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.control.client import ControlClient
from edge.control.errors import ControlUnreachable, RemoteError
from edge.control.log_store import LogStore
from edge.control.logs import NodeLine, StoredLine, parse_batch, parse_line
from edge.control.store import DB_NAME, Store
from edge.errors import BadRequest
from edge.node.logbuffer import LogBuffer
from edge.node.logship import LogShipper
from edge.sandbox.host import LogLine
from tests.control.conftest import ControlServer, FakeClock, add_version, free_port
from tests.control.test_api import upload
from tests.control.test_crash import spawn, wait_ready
from tests.control.test_logship import ship_once

Start = Callable[..., ControlServer]
MakeStore = Callable[..., Store]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def raw(function: str, message: str, **kw: Any) -> dict[str, Any]:
    return {"function": function, "version": "1", "request_id": "r1", "trace_id": TRACE,
            "level": "info", "source": "log", "message": message, "time": time.time(), **kw}


def node_line(tenant: str, fn: str, message: str, t: float = 100.0) -> NodeLine:
    return NodeLine(tenant, fn, "1", "r", "", "info", "log", message, t)


def logs_of(store: Store, clock: FakeClock, **kw: Any) -> LogStore:
    return LogStore(store.data_dir / DB_NAME, now=clock, **kw)


def messages(lines: list[StoredLine]) -> list[str]:
    return [s.line.message for s in lines]


def test_tenants_see_only_their_own_functions_lines(make_store: MakeStore,
                                                   clock: FakeClock) -> None:
    store = make_store()
    quiet, loud = store.create_tenant("quiet"), store.create_tenant("loud")
    add_version(store, quiet)
    add_version(store, loud)  # the same function name in another tenant
    with logs_of(store, clock) as logs:
        assert logs.add("n1", "eu", [node_line("quiet", "hello", "mine"),
                                     node_line("loud", "hello", "theirs"),
                                     node_line("ghost", "hello", "no such tenant"),
                                     node_line("quiet", "nothere", "no such function")]) == 2
        assert messages(logs.query(quiet, "hello")) == ["mine"]
        assert messages(logs.query(loud, "hello")) == ["theirs"]
        assert logs.query(loud, "nothere") == []


def test_queries_filter_by_function_time_region_cursor_and_limit(
    make_store: MakeStore, clock: FakeClock
) -> None:
    store = make_store()
    t = store.create_tenant("t")
    add_version(store, t, "a")
    add_version(store, t, "b")
    with logs_of(store, clock) as logs:
        logs.add("eu-1", "eu-west", [node_line("t", "a", "old", 10.0), node_line("t", "b", "b")])
        logs.add("us-1", "us-east", [node_line("t", "a", "new", 20.0)])
        logs.add("eu-1", "eu-west", [node_line("t", "a", "newest", 30.0)])
        assert messages(logs.query(t, "a")) == ["old", "new", "newest"]
        assert messages(logs.query(t, "a", since_unix=15.0)) == ["new", "newest"]
        assert messages(logs.query(t, "a", region="us-east")) == ["new"]
        assert [(s.node, s.region) for s in logs.query(t, "a", region="eu-west")] == [
            ("eu-1", "eu-west"), ("eu-1", "eu-west")]
        first = logs.query(t, "a")[0]
        assert messages(logs.query(t, "a", after_seq=first.seq)) == ["new", "newest"]
        assert messages(logs.query(t, "a", limit=1)) == ["newest"]
        assert logs.query(t, "a", limit=0) == []
        assert logs.seq == logs.query(t, "a")[-1].seq == 4


def test_each_function_keeps_its_newest_lines(make_store: MakeStore, clock: FakeClock) -> None:
    store = make_store()
    t = store.create_tenant("t")
    add_version(store, t, "quiet")
    add_version(store, t, "loud")
    with logs_of(store, clock, max_lines=5) as logs:
        logs.add("n1", "eu", [node_line("t", "quiet", "mine")])
        for burst in range(3):  # one trim per batch, and across batches
            logs.add("n1", "eu", [node_line("t", "loud", f"spam {burst}.{i}") for i in range(4)])
        assert messages(logs.query(t, "quiet")) == ["mine"]
        assert messages(logs.query(t, "loud")) == [
            "spam 1.3", "spam 2.0", "spam 2.1", "spam 2.2", "spam 2.3"]
    with logs_of(store, clock, max_lines=3) as reopened:  # counts what is on disk first
        reopened.add("n1", "eu", [node_line("t", "loud", "after")])
        assert messages(reopened.query(t, "loud")) == ["spam 2.2", "spam 2.3", "after"]
        assert messages(reopened.query(t, "quiet")) == ["mine"]


def test_lines_older_than_the_age_limit_are_hidden_then_deleted(
    make_store: MakeStore, clock: FakeClock
) -> None:
    store = make_store()
    t = store.create_tenant("t")
    add_version(store, t)
    with logs_of(store, clock, max_age_s=3600, max_lines=10) as logs:
        logs.add("n1", "eu", [node_line("t", "hello", "first")])
        clock.advance(1800)
        logs.add("n1", "eu", [node_line("t", "hello", "second")])
        clock.advance(1801)  # "first" is now 3601 s old, "second" 1801 s
        assert messages(logs.query(t, "hello")) == ["second"]
        logs.add("n1", "eu", [node_line("t", "hello", "third")])
        kept = store_rows(store)
        assert kept == ["second", "third"]
        clock.advance(7200)
        assert logs.query(t, "hello") == []
        newest = logs.seq
        logs.add("n1", "eu", [node_line("t", "hello", "fourth")])
        assert store_rows(store) == ["fourth"]
        # Every line was pruned at some point, yet numbers go on: a follower's cursor holds.
        assert logs.query(t, "hello")[0].seq == newest + 1
        # The count kept in memory followed the age deletes: 10 more lines fit before a trim.
        logs.add("n1", "eu", [node_line("t", "hello", f"more {i}") for i in range(9)])
        assert len(store_rows(store)) == 10


def store_rows(store: Store) -> list[str]:
    with sqlite3.connect(store.data_dir / DB_NAME) as db:
        return [r[0] for r in db.execute("SELECT message FROM function_logs ORDER BY seq")]


def test_bad_retention_settings_are_refused(make_store: MakeStore, clock: FakeClock) -> None:
    store = make_store()
    for bad in ({"max_lines": 0}, {"max_age_s": 0.0}):
        with pytest.raises(ValueError, match="retention"):
            logs_of(store, clock, **bad)


@pytest.mark.parametrize("change", [
    {"function": "hello"},  # no tenant
    {"function": "t/Bad Name"},
    {"level": "loud"},
    {"source": "kernel"},
    {"trace_id": "XYZ"},
    {"request_id": "has spaces"},
    {"time": "yesterday"},
    {"time": True},
    {"time": float("nan")},
    {"time": float("inf")},
    {"message": 5},
    {"level": []},  # unhashable: it once made the whole batch a 500
    {"source": {"a": 1}},
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
    for query in ("since=yesterday", "after=x", "region=Bad_Region", "limit=ten", "follow=maybe"):
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


def test_lines_and_drop_records_survive_a_control_plane_restart(tmp_path: Path) -> None:
    """Real processes: lines shipped (with a full buffer's drop record), the control plane
    killed and started again on the same data directory, then `edge logs --since` and a
    follower still see every line, and new lines still stream."""
    data, log = tmp_path / "data", tmp_path / "control.log"

    def start() -> tuple[subprocess.Popen[bytes], str, str]:
        url = f"http://127.0.0.1:{free_port()}"
        proc = spawn(["edge.control", "control", "--data", str(data), "--listen",
                      url.removeprefix("http://")], log)  # fmt: skip
        return proc, url, wait_ready(url, data, proc, log)

    server, url, admin = start()
    try:
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {admin}"}) as c:
            assert upload(c).status_code == 201
        node_token = json.loads((data / "tokens.json").read_text())["node"]
        buffer = LogBuffer(3)
        shipper = LogShipper(url, node_token, "eu-1", "eu-west", buffer, 1.0, say=lambda _: None)
        for n in range(5):  # lines 3 and 4 do not fit: one drop record
            shipper(LogLine("default/hello", f"req-{n}", "info", f"line {n}", "log", time.time()))
        assert ship_once(shipper)
        os.kill(server.pid, signal.SIGKILL)  # no clean shutdown: committed batches must hold
        server.wait(10)
        server, url, admin = start()
        env = {**os.environ, "EDGE_CONTROL_URL": url, "EDGE_TOKEN": admin}
        r = subprocess.run([sys.executable, "-m", "edge", "logs", "hello", "--since", "10m",
                            "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        got = [json.loads(x) for x in r.stdout.splitlines()]
        assert [(x["message"], x["source"], x["node"]) for x in got] == [
            ("line 0", "log", "eu-1"), ("line 1", "log", "eu-1"), ("line 2", "log", "eu-1"),
            ("2 log lines dropped (the node's log buffer was full)", "platform", "eu-1"),
        ]  # fmt: skip

        # A follower that saw the old lines gets only what is shipped after the restart.
        followed: queue.Queue[dict[str, Any]] = queue.Queue()
        client = ControlClient(url, admin)

        def follow() -> None:
            with contextlib.suppress(ControlUnreachable):
                for line in client.follow_logs("hello", after=got[-1]["seq"]):
                    followed.put(line)

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        r2 = httpx.post(url + "/v1/node/logs", headers={"authorization": f"Bearer {node_token}"},
                        json={"node_id": "eu-2", "region": "eu-west",
                              "lines": [raw("default/hello", "after the restart")]})
        assert r2.status_code == 200 and r2.json() == {"kept": 1, "rejected": 0}
        line = followed.get(timeout=10)
        assert (line["message"], line["node"]) == ("after the restart", "eu-2")
        assert line["seq"] > got[-1]["seq"]
        client.close()
        reader.join(10)
        assert followed.empty()
    finally:
        server.kill()
        server.wait(10)


def test_logs_follow_goes_on_across_a_control_plane_restart(tmp_path: Path) -> None:
    """`edge logs --follow` used to end with "peer closed connection" when the control plane
    was restarted (an upgrade, say); it reconnects on the same address and goes on after the
    last line it printed, with no line twice."""
    data, log = tmp_path / "data", tmp_path / "control.log"
    url = f"http://127.0.0.1:{free_port()}"

    def start() -> tuple[subprocess.Popen[bytes], str]:
        proc = spawn(["edge.control", "control", "--data", str(data), "--listen",
                      url.removeprefix("http://")], log)  # fmt: skip
        return proc, wait_ready(url, data, proc, log)

    def ship(message: str) -> None:
        node_token = json.loads((data / "tokens.json").read_text())["node"]
        r = httpx.post(url + "/v1/node/logs", headers={"authorization": f"Bearer {node_token}"},
                       json={"node_id": "eu-1", "region": "eu-west",
                             "lines": [raw("default/hello", message)]})
        assert r.status_code == 200, r.text

    server, admin = start()
    env = {**os.environ, "EDGE_CONTROL_URL": url, "EDGE_TOKEN": admin}
    follower: subprocess.Popen[str] | None = None
    said = ""
    try:
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {admin}"}) as c:
            assert upload(c).status_code == 201
        bad = subprocess.run([sys.executable, "-m", "edge", "logs", "hello", "--since", "soon",
                              "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1 and json.loads(bad.stdout)["error"]["type"] == "bad_request"
        ship("before")
        follower = subprocess.Popen(
            [sys.executable, "-m", "edge", "logs", "hello", "--follow", "--json"], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        lines: queue.Queue[str] = queue.Queue()
        out = follower.stdout
        assert out is not None
        threading.Thread(target=lambda: [lines.put(x) for x in out], daemon=True).start()
        assert json.loads(lines.get(timeout=30))["message"] == "before"
        server.terminate()
        server.wait(15)
        server, _ = start()
        ship("after")
        assert json.loads(lines.get(timeout=30))["message"] == "after"
        assert follower.poll() is None  # still following
    finally:
        if follower is not None:
            follower.terminate()
            rest, said = follower.communicate(timeout=10)  # closes its pipes
            assert "before" not in rest
        server.terminate()
        server.wait(15)
    assert "reconnecting" in said
    assert lines.empty()  # "before" came once
