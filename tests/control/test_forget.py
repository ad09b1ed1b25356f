"""Forgetting a node that is gone for good: the store's rules on a frozen clock, then a real
node process against a control plane on real sockets, through the API and `edge node forget`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.control.api import ControlSettings
from edge.control.errors import NodeAlive, NotFound
from edge.control.snapshot import open_snapshot
from edge.control.store import Store
from tests.conftest import REPO, NodeFactory, Proc
from tests.control.conftest import ControlServer, FakeClock

Start = Callable[..., ControlServer]
MakeStore = Callable[..., Store]


def test_only_a_silent_node_is_forgotten_and_it_may_join_again(
    make_store: MakeStore, clock: FakeClock
) -> None:
    store = make_store()
    joined = store.report_node("eu-1", "eu-west", 0, True, None, url="http://127.0.0.1:1")
    assert joined is not None
    clock.advance(30)
    with pytest.raises(NodeAlive, match="reported 30 s ago"):
        store.forget_node("eu-1", 60.0, "ops")
    with pytest.raises(NotFound):
        store.forget_node("nobody", 60.0, "ops")
    clock.advance(31)
    gone, revision = store.forget_node("eu-1", 60.0, "ops")
    assert (gone.id, gone.region, gone.url) == ("eu-1", "eu-west", "http://127.0.0.1:1")
    assert revision == joined + 1 == store.revision()
    assert store.nodes() == [] and store.config_at(revision).nodes == ()
    assert store.config_at(joined).nodes[0].id == "eu-1"  # the past stays as it was
    row = store.revisions()[-1]
    assert (row.kind, row.author) == ("node", "ops")
    with pytest.raises(NotFound):
        store.forget_node("eu-1", 60.0, "ops")
    # Back again: a join like any other, with its own revision.
    again = store.report_node("eu-1", "eu-west", revision, True, None, url="http://127.0.0.1:2")
    assert again == revision + 1
    assert [n.url for n in store.config_at(again).nodes] == ["http://127.0.0.1:2"]


def edge_cli(server: ControlServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGE_CONTROL_URL": server.url, "EDGE_TOKEN": server.admin}
    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def test_a_decommissioned_node_is_forgotten_and_a_returning_one_joins(
    start_control: Start, start_node: NodeFactory, tmp_path: Path
) -> None:
    server = start_control(ControlSettings(
        node_stale_after_s=1.5, health_interval_s=0.1, health_timeout_s=0.5, health_rise=1,
        health_fall=1,
    ))  # fmt: skip
    admin = server.client(server.admin)

    def node_row() -> dict[str, Any] | None:
        rows = admin.get("/v1/status").json()["nodes"]
        return next((n for n in rows if n["id"] == "eu-1"), None)

    def start() -> Proc:
        body = (f'[control]\nurl = "{server.url}"\ntoken = "{server.node}"\n'
                f'public_key = "{server.signer.public_key.hex()}"\n'
                f'state_dir = "{tmp_path / "state"}"\n')  # fmt: skip
        return start_node(body, node='id = "eu-1"\nregion = "eu-west"\n', ready=False)

    node = start()
    wait_for(lambda: (node_row() or {}).get("check") == "up", "the node checked up")
    r = admin.delete("/v1/nodes/eu-1")
    assert r.status_code == 409 and r.json()["error"] == "node_alive", r.text
    refused = edge_cli(server, "node", "forget", "eu-1", "--json")
    assert refused.returncode != 0
    assert json.loads(refused.stdout)["error"]["type"] == "node_alive"

    node.stop()
    wait_for(lambda: (row := node_row()) and row["stale"] and row["check"] == "down",
             "the node stale and checked down")
    # Only the operator's scope may forget; tenants' tokens and node tokens may not.
    tenant = server.client(server.token("default", ("read", "deploy", "operate")))
    assert tenant.delete("/v1/nodes/eu-1").status_code == 403
    assert server.client(server.node).delete("/v1/nodes/eu-1").status_code == 403

    done = edge_cli(server, "node", "forget", "eu-1", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["forgotten"]["id"] == "eu-1" and result["forgotten"]["stale"]
    assert node_row() is None
    regions = admin.get("/v1/regions").json()["regions"]
    assert all(r["nodes"] == 0 and r["endpoints"] == [] for r in regions)
    snapshot = httpx.get(server.url + "/v1/node/snapshot",
                         headers={"authorization": f"Bearer {server.node}"})
    opened = open_snapshot(snapshot.content, server.signer.public_key)
    assert opened.revision == result["revision"] and "eu-1" not in opened.nodes
    again = admin.delete("/v1/nodes/eu-1")
    assert again.status_code == 404 and again.json()["error"] == "not_found"
    text = edge_cli(server, "node", "forget", "eu-1")
    assert text.returncode != 0 and "no node 'eu-1'" in text.stderr

    back = start()
    row = wait_for(lambda: (row := node_row()) and row["check"] == "up" and row,
                   "the node back and checked up")
    assert not row["stale"]
    snapshot = httpx.get(server.url + "/v1/node/snapshot",
                         headers={"authorization": f"Bearer {server.node}"})
    assert open_snapshot(snapshot.content, server.signer.public_key).nodes["eu-1"].url \
        == back.url
