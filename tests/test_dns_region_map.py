"""The DNS server takes its region map from the control plane, as processes on 127.0.0.1: a
control plane, follower nodes each on a loopback address of its own (which they advertise, so
it is what DNS answers), and `edge dns --control ... --workers 2` with a traffic.toml that has
no regions. Regions and nodes come and go at the control plane; answers follow."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import pytest

from .cluster import Control, follower
from .conftest import REPO, NodeFactory, Proc, _spawn, free_port, wait_until
from .geo_dns import dns_and_health_toml, resolve

GEOIP_TEST_DB = REPO.parent / "shared" / "geoip" / "GeoIP2-City-Test.mmdb"
LONDON = "81.2.69.160/27"  # eu-west (Dublin) is nearest
SAN_DIEGO = "214.78.120.0/22"
TOKYO = "2001:218::/48"  # ap-south (Mumbai) once it exists, eu-west (over the pole) before
EU_1, EU_2, US_1, AP_1 = "127.0.0.21", "127.0.0.24", "127.0.0.22", "127.0.0.23"
QUERIES = 12  # per check: random source ports spread them over both UDP workers

@dataclass
class Stack:
    control: Control
    start_node: NodeFactory
    tmp: Path
    dns: Proc
    port: int

    def node(self, node_id: str, region: str, host: str) -> Proc:
        return follower(self.start_node, self.control, node_id, region, self.tmp / node_id,
                        host=host)  # fmt: skip

    def answers(self, subnet: str) -> set[str]:
        """Every address of QUERIES answers (one set: the answers must agree to be one)."""
        seen: set[str] = set()
        for _ in range(QUERIES):
            seen |= resolve(self.port, subnet)
        return seen

    def wait_for(self, subnet: str, want: set[str], timeout_s: float = 20.0) -> None:
        def check() -> bool:
            try:
                return self.answers(subnet) == want
            except dns.exception.DNSException:
                return False

        wait_until(check, timeout_s, f"answers {want} for {subnet}", self.dns)

    def edge(self, *args: str) -> str:
        env = {"EDGE_CONTROL_URL": self.control.url, "EDGE_TOKEN": self.control.tokens["admin"],
               "PATH": "/usr/bin:/bin"}  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "edge", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture
def stack(control: Control, start_node: NodeFactory, tmp_path: Path) -> Iterator[Stack]:
    port = free_port()
    config = tmp_path / "traffic.toml"
    config.write_text(dns_and_health_toml(port, interval_s=0.3))
    log = tmp_path / "dns.log"
    proc = Proc(
        _spawn(["dns", "--config", str(config), "--control", control.url,
                "--token", control.tokens["node"], "--geoip-db", str(GEOIP_TEST_DB),
                "--workers", "2"], log),
        f"udp://127.0.0.1:{port}", log,
    )  # fmt: skip
    s = Stack(control, start_node, tmp_path, proc, port)
    try:
        yield s
    finally:
        proc.stop()
    assert proc.proc.returncode == 0, proc.log()


def test_region_map_comes_from_the_control_plane(stack: Stack) -> None:
    stack.edge("region", "set", "eu-west", "--lat", "53.35", "--lon", "-6.26")
    stack.edge("region", "set", "us-east", "--lat", "39.04", "--lon", "-77.49")
    stack.node("eu-1", "eu-west", EU_1)
    stack.node("us-1", "us-east", US_1)
    # No region in traffic.toml: London gets the eu-west node's own address, and so does
    # Tokyo (Dublin is nearer to it than Ashburn).
    stack.wait_for(SAN_DIEGO, {US_1})
    assert stack.answers(LONDON) == {EU_1}
    assert stack.answers(TOKYO) == {EU_1}

    # A new region with a node joining: Tokyo moves to it.
    stack.edge("region", "set", "ap-south", "--lat", "19.08", "--lon", "72.88")
    ap = stack.node("ap-1", "ap-south", AP_1)
    stack.wait_for(TOKYO, {AP_1})
    assert stack.answers(LONDON) == {EU_1}

    # A second node in eu-west joins the answers; killed, it leaves them (health thresholds).
    eu2 = stack.node("eu-2", "eu-west", EU_2)
    stack.wait_for(LONDON, {EU_1, EU_2})
    eu2.stop()
    stack.wait_for(LONDON, {EU_1}, timeout_s=10)

    # Drain still moves answers: London to the nearest region not drained.
    stack.edge("region", "drain", "eu-west", "--over", "0s")
    stack.wait_for(LONDON, {US_1}, timeout_s=10)
    stack.edge("region", "undrain", "eu-west")
    stack.wait_for(LONDON, {EU_1}, timeout_s=10)

    # ap-south's only node dies: Tokyo goes back to the next nearest region.
    ap.stop()
    stack.wait_for(TOKYO, {EU_1}, timeout_s=10)
    log = stack.dns.log()
    assert "region map: ap-south added (nodes: ap-1)" in log
    assert "region map: node eu-2 joined eu-west" in log


def test_without_control_plane_or_regions_edge_dns_says_what_is_missing(tmp_path: Path) -> None:
    config = tmp_path / "traffic.toml"
    config.write_text(dns_and_health_toml(free_port(), interval_s=0.3))
    done = subprocess.run([sys.executable, "-m", "edge", "dns", "--config", str(config)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0
    assert "has no [[region]]" in done.stderr and "--control" in done.stderr
