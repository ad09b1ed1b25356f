"""A control plane and several nodes as real processes on 127.0.0.1: deploy, canary, promote,
rollback, static stability, and refusing tampered or wrongly signed state."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from edge.build import build_function
from edge.config.toml_fields import load_toml
from edge.control.client import ControlClient

from .cluster import (
    FUNCTION,
    Control,
    cache_lookups,
    converge,
    follower,
    start_control,
    upload,
)
from .conftest import EXAMPLES, NodeFactory, Proc, wait_until

pytestmark = pytest.mark.toolchain


@dataclass
class Observation:
    t: float
    node: str
    ip: str
    status: int
    body: str
    version: str


class Load:
    """A steady, bounded request loop over every node and 24 client addresses."""

    def __init__(self, nodes: list[Proc]) -> None:
        self.nodes = nodes
        self.ips = [f"81.2.69.{i}" for i in range(100, 124)]
        self.seen: list[Observation] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        deadline = time.monotonic() + 300
        with httpx.Client(timeout=10) as http:
            i = 0
            while not self.stop.is_set() and time.monotonic() < deadline:
                node = self.nodes[i % len(self.nodes)]
                ip = self.ips[i % len(self.ips)]
                i += 1
                try:
                    r = http.get(node.url + "/", headers={"x-forwarded-for": ip})
                    status, body, version = (
                        r.status_code,
                        r.text,
                        r.headers.get("x-edge-version", ""),
                    )
                except httpx.HTTPError as e:
                    status, body, version = 0, repr(e), ""
                self.seen.append(Observation(time.monotonic(), node.url, ip, status, body, version))

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def mark(self) -> float:
        time.sleep(0.3)  # some traffic in every phase
        return time.monotonic()


def test_deploy_canary_promote_rollback_under_load(
    control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    nodes = [
        follower(start_node, control, f"n{i}", region, tmp_path / f"state{i}")
        for i, region in enumerate(["eu-west", "eu-west", "us-east"])
    ]
    with control.client() as client:
        v1 = upload(client, tmp_path, "version one")
        converge(client, client.deploy(FUNCTION, v1, ["*/"]))
        for node in nodes:
            r = httpx.get(node.url + "/")
            assert (
                r.text == "version one\n" and r.headers["x-edge-version"] == f"default/{FUNCTION}@1"
            )
        v2 = upload(client, tmp_path, "version two")
        phases: list[tuple[float, float, int]] = []  # (start, end, canary percent)
        with Load(nodes) as load:
            for percent in (10, 50, 100):
                start = time.monotonic()
                converge(client, client.canary(FUNCTION, v2, percent))
                phases.append((time.monotonic(), 0.0, percent))
                load.mark()
                phases[-1] = (phases[-1][0], time.monotonic(), percent)
            converge(client, client.promote(FUNCTION))
            promoted = (time.monotonic(), load.mark())
            converge(client, client.rollback(FUNCTION, None))
            rolled_back = (time.monotonic(), load.mark())
            del start
        status = client.status()
    failed = [o for o in load.seen if o.status != 200]
    assert load.seen and not failed, failed[:5]
    # Within a phase, every client stays on one version; raising the percent only adds clients.
    canary_sets = []
    for start, end, percent in phases:
        by_ip: dict[str, set[str]] = {}
        for o in load.seen:
            if start <= o.t <= end:
                by_ip.setdefault(o.ip, set()).add(o.body)
        assert all(len(v) == 1 for v in by_ip.values()), (percent, by_ip)
        canary_sets.append({ip for ip, v in by_ip.items() if v == {"version two\n"}})
    assert canary_sets[0] <= canary_sets[1] <= canary_sets[2]
    assert len(canary_sets[2]) == len(
        {o.ip for o in load.seen if phases[2][0] <= o.t <= phases[2][1]}
    )
    after_promote = {o.body for o in load.seen if promoted[0] <= o.t <= promoted[1]}
    after_rollback = {o.body for o in load.seen if rolled_back[0] <= o.t <= rolled_back[1]}
    assert after_promote == {"version two\n"} and after_rollback == {"version one\n"}
    assert {n["id"] for n in status["nodes"]} == {"n0", "n1", "n2"}
    assert set(status["regions"]) == {"eu-west", "us-east"}
    assert all(n["current"] and n["convergence_ms"] is not None for n in status["nodes"])


def test_nodes_serve_on_without_the_control_plane(
    control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    node = follower(start_node, control, "solo", "eu-west", state)
    with control.client() as client:
        converge(client, client.deploy(FUNCTION, upload(client, tmp_path, "before outage"), ["*/"]))
    control.proc.proc.send_signal(signal.SIGKILL)
    control.proc.proc.wait()
    for _ in range(20):
        assert httpx.get(node.url + "/").text == "before outage\n"
    # Restart the node while the control plane is down: it serves what it kept on disk.
    node.stop()
    again = follower(start_node, control, "solo", "eu-west", state, ready=False)
    # How fast (the issue asks for under a second) is measured by bench.restart, not here.
    wait_until(lambda: httpx.get(again.url + "/").status_code == 200, 10, "restored node", again)
    assert httpx.get(again.url + "/").text == "before outage\n"
    assert "serving the state kept on disk" in again.log()
    # The control plane returns: the node catches up with what is deployed next.
    back = start_control(control.data, control.port, tmp_path / "control2.log")
    try:
        with back.client() as client:
            converge(
                client, client.deploy(FUNCTION, upload(client, tmp_path, "after outage"), None)
            )
        # Converged may come before the node's first report to the restarted control plane,
        # which then holds its old address (it restarted on a new port), checks it down and
        # does not wait for it: the node catches up when it reports.
        wait_until(
            lambda: httpx.get(again.url + "/").text == "after outage\n", 30, "caught up", again
        )
        # It said when it lost the control plane and when it had it back, once each.
        back_again = "control plane reachable again; following it"
        wait_until(lambda: back_again in again.log(), 10, "reachable again", again)
        said = again.log()
        assert said.index("cannot follow the control plane (ConnectError") < said.index(
            back_again)
        assert said.count("cannot follow the control plane") == 1
    finally:
        back.proc.stop()


def test_tampered_blob_and_wrong_key_are_refused(
    control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    good = follower(start_node, control, "good", "eu-west", tmp_path / "good")
    wrong_key = "ab" * 32
    bad = follower(
        start_node,
        control,
        "wrongkey",
        "eu-west",
        tmp_path / "bad",
        public_key=wrong_key,
        ready=False,
    )
    with control.client() as client:
        v1 = upload(client, tmp_path, "trusted")
        result = client.deploy(FUNCTION, v1, ["*/"])
        client.wait_for(int(result["revision"]), 15)
        assert httpx.get(good.url + "/").text == "trusted\n"
        # The node with the wrong key applies nothing and says why.
        assert httpx.get(bad.url + "/readyz").status_code == 503
        assert httpx.get(bad.url + "/").status_code == 404
        wait_until(lambda: "key" in _node(client, "wrongkey")["last_error"], 15, "report", bad)

        # A blob altered on the control plane's disk after upload is refused by the node.
        v2 = upload(client, tmp_path, "tampered")
        sha = client.versions(FUNCTION)["versions"][-1]["sha256"]
        blob = next(control.data.rglob(sha))
        blob.write_bytes(blob.read_bytes().replace(b"tampered", b"TAMPERED"))
        revision = int(client.deploy(FUNCTION, v2, None)["revision"])
        wait_until(lambda: "sha256" in _node(client, "good")["last_error"], 15, "refusal", good)
        assert _node(client, "good")["applied_revision"] < revision
        for _ in range(10):
            assert httpx.get(good.url + "/").text == "trusted\n"  # the last good state serves on
    assert "still serving the last good state" in good.log()


def _node(client: ControlClient, node_id: str) -> dict[str, object]:
    return next(n for n in client.status()["nodes"] if n["id"] == node_id)


def test_edge_deploy_command_end_to_end(
    control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    node = follower(start_node, control, "cli", "eu-west", tmp_path / "cli")
    project = tmp_path / "proj"
    shutil.copytree(EXAMPLES / "c" / "hello", project, ignore=shutil.ignore_patterns("build"))
    out = subprocess.run(
        [
            *_edge(),
            "deploy",
            str(project),
            "--route",
            "*/",
            "--control",
            control.url,
            "--token",
            control.tokens["admin"],
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["convergence"]["converged"] is True
    assert httpx.get(node.url + "/").text == "Hello from C!\n"


def _edge() -> list[str]:
    import sys

    return [sys.executable, "-m", "edge"]


Unused = Callable[[], None]


def test_first_request_after_a_switch_pays_no_compilation(
    control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    """A Python function takes seconds to compile from nothing; the node compiles it (with
    Winch, then tiers up to Cranelift code in the background) before it switches, so the first
    request after the switch is answered at once."""
    node = follower(
        start_node,
        control,
        "cold",
        "eu-west",
        tmp_path / "cold",
        cache_dir=tmp_path / "empty-compile-cache",
    )
    project = EXAMPLES / "python" / "hello"
    data = build_function(project).read_bytes()
    with control.client() as client:
        version = client.upload_version("hello-python", data, load_toml(project / "edge.toml"), "")
        converge(client, client.deploy("hello-python", int(version["number"]), ["*/"]))
    label = str(version["number"])
    # Converged means the node switched; what it switched to is compiled code already.
    tiers = next(iter(httpx.get(node.url + "/readyz").json()["tiers"].values()))
    assert tiers.get(label) in ("winch", "cranelift"), tiers
    t0 = time.perf_counter()
    r = httpx.get(node.url + "/")
    first_s = time.perf_counter() - t0
    assert r.status_code == 200 and r.text == "Hello from Python!\n"
    # Loose, for a machine shared with other work: a compile from nothing takes 0.9 s (Winch)
    # to 3.7 s (Cranelift) on a quiet one, the first request there ~0.05 s.
    assert first_s < 2.0, f"first request took {first_s:.2f}s: compiled at request time?"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        tiers = next(iter(httpx.get(node.url + "/readyz").json()["tiers"].values()))
        if tiers[label] == "cranelift":
            break
        assert httpx.get(node.url + "/").status_code == 200
        time.sleep(0.05)
    assert tiers == {label: "cranelift"}
    compiled = list((tmp_path / "empty-compile-cache").glob("*.cwasm"))
    assert compiled, "the node did not store its Cranelift code in its cache"


def test_rollback_to_a_recent_version_neither_loads_nor_compiles(
    control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    """The versions a node served recently stay loaded: rolling back to one switches without
    a compile-cache lookup (let alone a compile)."""
    node = follower(start_node, control, "rb", "eu-west", tmp_path / "rb")
    with control.client() as client:
        v1 = upload(client, tmp_path, "first")
        converge(client, client.deploy(FUNCTION, v1, ["*/"]))
        converge(client, client.deploy(FUNCTION, upload(client, tmp_path, "second"), None))
        assert httpx.get(node.url + "/").text == "second\n"
        lookups = cache_lookups(node)
        converge(client, client.rollback(FUNCTION, v1))
    r = httpx.get(node.url + "/")
    assert r.text == "first\n" and r.headers["x-edge-version"] == f"default/{FUNCTION}@{v1}"
    assert cache_lookups(node) == lookups >= 2
