"""The control plane's own /healthz checks against real node processes on 127.0.0.1: a killed
node goes down within the fall threshold while its neighbour stays up, and comes back up when
it is restarted at the same address."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .cluster import Control, follower, start_control
from .conftest import REPO, NodeFactory, Proc, _spawn, free_port

INTERVAL_S = 0.2
# Far above fall x (interval + timeout) = 1.4 s: a busy shared machine must not fail this.
BOUND_S = 30.0


@pytest.fixture
def checked_control(tmp_path: Path) -> Iterator[Control]:
    c = start_control(
        tmp_path / "control", free_port(), tmp_path / "control.log",
        ("--health-interval", str(INTERVAL_S), "--health-timeout", "0.5",
         "--health-rise", "2", "--health-fall", "2"),
    )
    yield c
    c.proc.stop()


def status(control: Control) -> dict[str, Any]:
    r = httpx.get(control.url + "/v1/status",
                  headers={"authorization": f"Bearer {control.tokens['admin']}"})
    r.raise_for_status()
    return dict(r.json())


def checks(control: Control) -> dict[str, str]:
    return {n["id"]: n["check"] for n in status(control)["nodes"]}


def wait_for(control: Control, wanted: dict[str, str]) -> dict[str, str]:
    deadline = time.monotonic() + BOUND_S
    seen = checks(control)
    while seen != wanted:
        assert time.monotonic() < deadline, f"wanted {wanted}, still {seen}:\n{control.proc.log()}"
        time.sleep(0.05)
        seen = checks(control)
    return seen


def edge_json(control: Control, *args: str) -> Any:
    env = {**os.environ, "EDGE_CONTROL_URL": control.url, "EDGE_TOKEN": control.tokens["admin"]}
    r = subprocess.run([sys.executable, "-m", "edge", *args, "--json"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def restart_same_address(start_node: NodeFactory, proc: Proc, tmp_path: Path) -> Proc:
    """The node again, from the config file NodeFactory wrote for its port."""
    port = proc.url.rsplit(":", 1)[1]
    config = start_node.workdir / f"node-{port}.toml"
    again = Proc(_spawn(["node", "--config", str(config)], tmp_path / "again.log"), proc.url,
                 tmp_path / "again.log")
    start_node.procs.append(again)
    return again


def test_a_killed_node_goes_down_and_comes_back_up(
    checked_control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    control = checked_control
    one = follower(start_node, control, "one", "eu-west", tmp_path / "one")
    two = follower(start_node, control, "two", "eu-west", tmp_path / "two")
    wait_for(control, {"one": "up", "two": "up"})

    one.proc.send_signal(signal.SIGKILL)
    one.proc.wait()
    wait_for(control, {"one": "down", "two": "up"})
    row = next(n for n in status(control)["nodes"] if n["id"] == "one")
    assert row["check_changed_unix"] <= time.time()
    region = status(control)["regions"]["eu-west"]
    assert (region["check_up"], region["check_down"]) == (1, 1)
    # The node's last report still says healthy; the control plane knows better.
    assert row["healthy"] is True and not row["stale"]
    (listed,) = edge_json(control, "regions")["regions"]
    assert (listed["up_nodes"], listed["healthy_nodes"], listed["check_down"]) == (1, 2, 1)
    assert listed["node_urls"] == [two.url]  # where the DNS server and spills may send
    shown = edge_json(control, "status")
    assert {n["id"]: n["check"] for n in shown["nodes"]} == {"one": "down", "two": "up"}

    restart_same_address(start_node, one, tmp_path)
    wait_for(control, {"one": "up", "two": "up"})
    changes = {
        line.split('"')[1]: float(line.split()[-1])
        for line in httpx.get(control.url + "/metrics").text.splitlines()
        if line.startswith("edge_control_node_check_changes_total{")
    }
    # At least: both up, one down, one up again (a loaded machine may add a flap).
    assert changes["down"] >= 1 and changes["up"] >= 3, changes
    human = subprocess.run(
        [sys.executable, "-m", "edge", "status", "--control", control.url,
         "--token", control.tokens["admin"]],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert "check" in human.stdout and "DOWN" not in human.stdout, human.stdout


def test_bad_health_options_are_usage_errors(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "edge", "control", "--data", str(tmp_path / "d"),
         "--health-rise", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2 and "--health-rise" in r.stderr
    assert not (tmp_path / "d").exists()
