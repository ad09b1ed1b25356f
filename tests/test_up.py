"""`edge up` as a user runs it: the whole stack on loopback, reachable by DNS and HTTP."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import httpx
import pytest

from .conftest import REPO, free_port

pytestmark = pytest.mark.toolchain


def refused(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) != 0


def test_edge_up_serves_the_example_by_geo_dns_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    control_port, node_port, dns_port = free_port(), free_port(), free_port()
    out = tmp_path / "up.out"
    with out.open("w") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "up", "--state-dir", str(tmp_path / "state"),
             "--control-port", str(control_port), "--node-port", str(node_port),
             "--dns-port", str(dns_port)],
            cwd=REPO, stdout=stdout, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while "Ctrl-C stops everything" not in out.read_text():
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        text = out.read_text()
        assert f"dig @127.0.0.1 -p {dns_port} hello.edge.test A" in text
        assert f"curl --resolve hello.edge.test:{node_port}:127.0.0.12" in text
        dashboard = f"http://127.0.0.1:{control_port}/dashboard/"
        assert dashboard in text
        assert httpx.get(dashboard).status_code == 200

        def resolve(subnet: str) -> set[str]:
            q = dns.message.make_query("hello.edge.test", "A")
            q.use_edns(0, options=[dns.edns.ECSOption.from_text(subnet)])
            r = dns.query.udp(q, "127.0.0.1", port=dns_port, timeout=2)
            return {rr.address for rrset in r.answer for rr in rrset}

        assert resolve("81.2.69.0/24") == {"127.0.0.12"}  # London: eu-west
        assert resolve("2001:218::/32") == {"127.0.0.13"}  # Japan: ap-south
        for address in ("127.0.0.11", "127.0.0.12", "127.0.0.13"):
            r = httpx.get(f"http://{address}:{node_port}/", headers={"host": "hello.edge.test"})
            assert r.status_code == 200 and r.text == "Hello from C!\n"

        # An operator drains eu-west: London's answers move to the next region, us-east.
        token = text.split("EDGE_TOKEN=", 1)[1].split()[0]
        cli = [sys.executable, "-m", "edge"]
        where = ["--control", f"http://127.0.0.1:{control_port}", "--token", token]
        drained = subprocess.run(
            [*cli, "region", "drain", "eu-west", "--over", "1s", *where],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert drained.returncode == 0, drained.stderr
        wait = time.monotonic() + 10
        while resolve("81.2.69.0/24") != {"127.0.0.11"}:
            assert time.monotonic() < wait, "London still answered from eu-west"
            time.sleep(0.2)
        time.sleep(1.0)  # the 1 s ramp is over by now (one client subnet may move earlier)
        listing = subprocess.run(
            [*cli, "regions", "--json", *where], capture_output=True, text=True, timeout=60
        )
        states = {
            r["name"]: (r["state"], r["share"]) for r in json.loads(listing.stdout)["regions"]
        }
        assert states["eu-west"] == ("drained", 0.0) and states["us-east"] == ("active", 1.0)
        # The drained region's node still answers what reaches it (cached DNS answers), by
        # forwarding it to the nearest region that is not drained: us-east, not ap-south.
        spilled = httpx.get(f"http://127.0.0.12:{node_port}/")
        assert spilled.status_code == 200 and spilled.headers["x-edge-region"] == "us-east"
        undrained = subprocess.run(
            [*cli, "region", "undrain", "eu-west", *where],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert undrained.returncode == 0, undrained.stderr
        wait = time.monotonic() + 10
        while resolve("81.2.69.0/24") != {"127.0.0.12"}:
            assert time.monotonic() < wait, "London did not come back to eu-west"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    assert code == 0, out.read_text()
    assert "edge up: stopped" in out.read_text()
    stopped = [("127.0.0.1", control_port), ("127.0.0.1", dns_port)]
    stopped += [(f"127.0.0.1{n}", node_port) for n in (1, 2, 3)]
    for address, port in stopped:
        assert refused(address, port), f"{address}:{port} still answers after Ctrl-C"
