"""The traffic layer end to end, as processes on 127.0.0.1: a control plane, two regions of
follower nodes, and `edge dns` following the control plane. An operator drains eu-west; DNS
answers for a London client move to us-east over the ramp, and eu-west's node forwards what
still reaches it, so a steady request loop sees no failure."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import httpx
import pytest

from .cluster import FUNCTION, Control, converge, follower, upload
from .conftest import NodeFactory, Proc, _spawn, free_port, wait_until
from .geo_dns import dns_and_health_toml, resolve

pytestmark = pytest.mark.toolchain

# Answer addresses are labels here (both nodes listen on 127.0.0.1): DNS never connects to
# them, and they tell the regions apart. Health checks go to the nodes' real URLs.
EU_ANSWER, US_ANSWER = "127.0.0.21", "127.0.0.22"
LONDON = "81.2.69.0/24"


@dataclass
class Stack:
    control: Control
    eu: Proc
    us: Proc
    dns_port: int


def traffic_toml(eu_url: str, us_url: str, port: int) -> str:
    return dns_and_health_toml(port) + f"""
[[region]]
name = "eu-west"
latitude_deg = 53.35
longitude_deg = -6.26
[[region.node]]
ipv4 = "{EU_ANSWER}"
health_url = "{eu_url}/healthz"

[[region]]
name = "us-east"
latitude_deg = 39.04
longitude_deg = -77.49
[[region.node]]
ipv4 = "{US_ANSWER}"
health_url = "{us_url}/healthz"

[steering]
default = ["us-east", "eu-west"]
"""


@pytest.fixture
def stack(control: Control, start_node: NodeFactory, tmp_path: Path) -> Iterator[Stack]:
    with control.client() as client:
        client.set_region("eu-west", 53.35, -6.26, 100)
        client.set_region("us-east", 39.04, -77.49, 100)
        eu = follower(start_node, control, "eu-1", "eu-west", tmp_path / "eu")
        us = follower(start_node, control, "us-1", "us-east", tmp_path / "us")
        converge(client, client.deploy(FUNCTION, upload(client, tmp_path, "hello"), ["*/"]))
        # Both nodes joined (a revision each) and every node has the snapshot naming them.
        converge(client, {"revision": client.status()["revision"]})
    port = free_port()
    config = tmp_path / "traffic.toml"
    config.write_text(traffic_toml(eu.url, us.url, port))
    log = tmp_path / "dns.log"
    dns_proc = Proc(
        _spawn(["dns", "--config", str(config), "--control", control.url,
                "--token", control.tokens["node"]], log),
        f"udp://127.0.0.1:{port}", log,
    )  # fmt: skip

    def answers() -> bool:
        try:
            return resolve(port, LONDON) == {EU_ANSWER}
        except dns.exception.DNSException:
            return False

    try:
        wait_until(answers, 30, "edge dns", dns_proc)
        yield Stack(control, eu, us, port)
    finally:
        dns_proc.stop()
    assert dns_proc.proc.returncode == 0, dns_proc.log()


def test_drain_under_steady_load_fails_no_request(stack: Stack) -> None:
    seen: list[tuple[float, int, str]] = []

    def hit(http: httpx.Client, n: int) -> None:
        for i in range(n):
            # Many client subnets (the spill split is per /24, like DNS), all London-ish.
            r = http.get(stack.eu.url + "/", headers={"x-forwarded-for": f"81.2.{i % 250}.7"})
            seen.append((time.monotonic(), r.status_code, r.headers.get("x-edge-region", "")))

    with stack.control.client() as client, httpx.Client(timeout=10) as http:
        hit(http, 100)
        drain = client.region("eu-west", "drain", 2.0)
        drain_started = time.monotonic()
        while time.monotonic() - drain_started < 3.0:  # the ramp, plus snapshot propagation
            hit(http, 20)
        during = [r for t, _, r in seen if drain_started <= t]
        drained = time.monotonic()
        hit(http, 250)
        back = client.region("eu-west", "undrain", 0.0)
        converge(client, back)
        undrained = time.monotonic()
        hit(http, 100)
    assert drain["state"] == "draining" and back["state"] == "active"
    assert seen and all(status == 200 for _, status, _ in seen), [s for s in seen if s[1] != 200]
    assert {r for t, _, r in seen if t < drain_started} == {"eu-west"}
    assert {"eu-west", "us-east"} <= set(during)  # a ramp, not a switch
    assert {r for t, _, r in seen if drained <= t < undrained} == {"us-east"}
    assert {r for t, _, r in seen if t >= undrained} == {"eu-west"}
    # The us-east node serves directly too, and a spilled request is never spilled again.
    direct = httpx.get(stack.us.url + "/", headers={"x-edge-spilled-from": "eu-west"})
    assert direct.headers["x-edge-region"] == "us-east"
    metrics = httpx.get(stack.eu.url + "/metrics").text
    assert 'edge_node_spills_total{to_region="us-east"}' in metrics


def test_dns_answers_move_to_the_next_region_during_a_drain(stack: Stack) -> None:
    port = stack.dns_port
    assert resolve(port, LONDON) == {EU_ANSWER}
    subnets = [f"81.2.{i}.0/24" for i in range(0, 250, 5)]  # 50 British client networks
    assert {a for s in subnets for a in resolve(port, s)} == {EU_ANSWER}
    with stack.control.client() as client:
        client.region("eu-west", "drain", 4.0)
        # Halfway through the ramp some networks have moved and some not (one per bucket).
        time.sleep(2.0)
        halfway = {a for s in subnets for a in resolve(port, s)}
        deadline = time.monotonic() + 10
        while resolve(port, LONDON) != {US_ANSWER}:
            assert time.monotonic() < deadline, "London still answered from eu-west"
            time.sleep(0.2)
        time.sleep(2.5)  # past the end of the ramp and a poll
        assert {a for s in subnets for a in resolve(port, s)} == {US_ANSWER}
        listing = {r["name"]: r for r in client.regions()["regions"]}
        assert (listing["eu-west"]["state"], listing["eu-west"]["share"]) == ("drained", 0.0)
        assert listing["eu-west"]["healthy_nodes"] == 1  # drained is not down
        # A weight set at the control plane reaches DNS too: us-east to standby (weight 0)
        # while eu-west is drained still answers us-east (a standby beats a drained region).
        client.set_region("us-east", 39.04, -77.49, 0)
        client.region("eu-west", "undrain", 0.0)
        deadline = time.monotonic() + 10
        while resolve(port, LONDON) != {EU_ANSWER}:
            assert time.monotonic() < deadline, "London did not come back to eu-west"
            time.sleep(0.2)
    assert halfway == {EU_ANSWER, US_ANSWER}
    # With eu-west back and us-east on standby, even a US client gets eu-west.
    assert resolve(port, "8.8.8.0/24") == {EU_ANSWER}


def test_edge_dns_without_a_control_plane_serves_traffic_toml(tmp_path: Path) -> None:
    """The follower is optional: unreachable control plane, answers from the file alone."""
    port = free_port()
    config = tmp_path / "traffic.toml"
    config.write_text(traffic_toml("http://127.0.0.1:9", "http://127.0.0.1:9", port))
    log = tmp_path / "dns.log"
    proc = Proc(
        _spawn(["dns", "--config", str(config), "--control", "http://127.0.0.1:9",
                "--token", "x"], log),
        "", log,
    )  # fmt: skip
    try:

        def answers() -> bool:
            try:
                return bool(resolve(port, LONDON))
            except dns.exception.DNSException:
                return False

        wait_until(answers, 30, "edge dns", proc)
        assert resolve(port, LONDON) == {EU_ANSWER}  # both down: fail open to the nearest
        # Its first look at the control plane may come after its first answer (a busy machine).
        said = "cannot read the region map from http://127.0.0.1:9/v1/regions (ConnectError"
        wait_until(lambda: said in proc.log(), 30, "the control plane's absence logged", proc)
    finally:
        proc.stop()


def test_a_wrong_token_is_named_as_such_by_node_and_dns(
    control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    """Both used to call a control plane that refused their token unreachable, the DNS server
    with httpx's three-line message about "region drains"."""
    body = (f'[control]\nurl = "{control.url}"\ntoken = "wrong"\n'
            f'public_key = "{control.tokens["public_key"]}"\nstate_dir = "{tmp_path / "s"}"\n')
    node = start_node(body, node='id = "n1"\nregion = "eu-west"\n', ready=False)
    config = tmp_path / "traffic.toml"
    config.write_text(traffic_toml(node.url, node.url, free_port()))
    log = tmp_path / "dns.log"
    dns_proc = Proc(_spawn(["dns", "--config", str(config), "--control", control.url,
                            "--token", "wrong"], log), "", log)
    try:
        said = "(it answered 401 unauthorized: unknown token)"
        wait_until(lambda: said in node.log(), 30, "the node's complaint", node)
        wait_until(lambda: said in dns_proc.log(), 30, "the DNS server's complaint", dns_proc)
    finally:
        dns_proc.stop()
    assert "cannot follow the control plane (it answered 401" in node.log()
    assert f"cannot read the region map from {control.url}/v1/regions (it answered 401" \
        in dns_proc.log()
    assert "unreachable" not in node.log() and "developer.mozilla.org" not in dns_proc.log()
