"""`edge up`: the whole system on one machine, on loopback, with one command.

A control plane, three regions (us-east, eu-west, ap-south) with one node each, every node on
its own loopback address (127.0.0.11/12/13, Linux routes all of 127/8 to lo) and the same port,
and the geo-DNS server answering for `edge.test.` with those addresses. It registers the regions
(location, weight) with the control plane; each node reports its address there, and the DNS
server takes its whole region map from the control plane (its traffic.toml has only the zone).
It deploys the C hello example on every route, waits until every node serves it, prints how to
reach it, and stops every process on Ctrl-C. State lives in ./.edge-up (tokens, control data,
node state).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from edge.build import build_function
from edge.cli_output import Output
from edge.config.toml_fields import load_toml
from edge.control.client import ControlClient
from edge.control.rotation import previous_file
from edge.control.sealing import KEY_FILE
from edge.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "sdk" / "examples" / "c" / "hello"


@dataclass(frozen=True)
class RegionSpec:
    name: str
    latitude_deg: float
    longitude_deg: float
    address: str


REGIONS = (
    RegionSpec("us-east", 39.04, -77.49, "127.0.0.11"),  # Ashburn
    RegionSpec("eu-west", 53.35, -6.26, "127.0.0.12"),  # Dublin
    RegionSpec("ap-south", 19.08, 72.88, "127.0.0.13"),  # Mumbai
)


@dataclass(frozen=True)
class UpSettings:
    state_dir: Path
    control_port: int = 7070
    node_port: int = 8787
    dns_port: int = 5353
    zone: str = "edge.test."
    host: str = "hello"


def traffic_toml(s: UpSettings) -> str:
    lines = [
        "# Written by `edge up`; regenerated at every start. No [[region]]: the regions and",
        "# their nodes' addresses come from the control plane (edge dns --control).",
        "[dns]",
        f'zone = "{s.zone}"',
        f'hosts = ["@", "{s.host}"]',
        f'nameservers = ["ns1.{s.zone}"]',
        "ttl_s = 30",
        f"port = {s.dns_port}",
        "",
        "[[dns.glue]]",
        f'name = "ns1.{s.zone}"',
        'ipv4 = ["127.0.0.1"]',
        "",
        "[health]",
        "interval_s = 1.0",
        "timeout_s = 0.5",
        "rise = 1",
        "fall = 2",
    ]
    lines += ["", "[steering]", f"default = {json.dumps([r.name for r in REGIONS])}", ""]
    return "\n".join(lines)


class Stack:
    def __init__(self, settings: UpSettings, out: Output) -> None:
        self.s = settings
        self.out = out
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.logs = settings.state_dir / "logs"

    def spawn(self, name: str, args: list[str]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edge", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                # Own session: Ctrl-C reaches `edge up` only, which stops the children in order.
                start_new_session=True,
            )
        self.procs.append((name, proc))

    def wait_for(self, what: str, check: object, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise ConfigError(f"{name} exited; see {self.logs / (name + '.log')}")
            try:
                if check():  # type: ignore[operator]
                    return
            except (httpx.HTTPError, OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise ConfigError(f"{what} did not come up within {timeout_s:g}s; see {self.logs}")

    def start(self) -> str:
        s = self.s
        data = s.state_dir / "control"
        control = f"http://127.0.0.1:{s.control_port}"
        with self.out.spinner("starting the control plane"):
            self.spawn(
                "control",
                ["control", "--data", str(data), "--listen", f"127.0.0.1:{s.control_port}"],
            )
            tokens_file = data / "tokens.json"
            self.wait_for(
                "the control plane",
                lambda: (
                    tokens_file.exists() and httpx.get(control + "/v1/status").status_code == 401
                ),
            )
        tokens = json.loads((data / "tokens.json").read_text())
        with self.out.spinner("registering three regions"), ControlClient(
            control, tokens["admin"]
        ) as client:
            for r in REGIONS:
                client.set_region(r.name, r.latitude_deg, r.longitude_deg, 100)
        with self.out.spinner("starting three regions"):
            for r in REGIONS:
                self.spawn(f"node-{r.name}", [
                    "node", "--control", control, "--region", r.name, "--id", f"{r.name}-1",
                    "--listen", f"{r.address}:{s.node_port}", "--token", tokens["node"],
                    "--public-key", tokens["public_key"],
                    "--state-dir", str(s.state_dir / "nodes" / r.name),
                    # On one machine the nodes read the control plane's own key file; elsewhere
                    # the operator copies it to each node. And the one an online rotation keeps
                    # the old key in, which it writes first: a node that looks at its files
                    # between the key file's change and the new revisions' arrival still opens
                    # what it serves (with the key file alone it answered 503 meanwhile).
                    "--secrets-key-file", str(data / KEY_FILE),
                    "--previous-secrets-key-file", str(previous_file(data / KEY_FILE)),
                ])  # fmt: skip
            for r in REGIONS:
                url = f"http://{r.address}:{s.node_port}/healthz"
                self.wait_for(f"node {r.name}", lambda u=url: httpx.get(u).status_code == 200)
            # Every node's address is at the control plane, so DNS's first read has them all.
            with ControlClient(control, tokens["admin"]) as client:
                self.wait_for("node reports", lambda: _all_reported(client))
        with self.out.spinner("starting the geo-DNS server"):
            traffic = s.state_dir / "traffic.toml"
            traffic.write_text(traffic_toml(s))
            self.spawn("dns", ["dns", "--config", str(traffic), "--port", str(s.dns_port),
                               "--control", control, "--token", tokens["admin"]])
            self.wait_for("the DNS server", lambda: _dns_answers(s))
        with self.out.spinner("building and deploying the C hello example"):
            component = build_function(EXAMPLE).read_bytes()
            manifest = load_toml(EXAMPLE / "edge.toml")
            with ControlClient(control, tokens["admin"]) as client:
                name = str(manifest["function"]["name"])
                version = client.upload_version(name, component, manifest, "edge up")
                result = client.deploy(name, int(version["number"]), ["*/"])
                state = client.wait_for(int(result["revision"]), 60)
                if not state.converged:
                    raise ConfigError(f"nodes did not apply the deploy: {state.laggards}")
        return str(tokens["admin"])

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _all_reported(client: ControlClient) -> bool:
    listing = {r["name"]: r for r in client.regions()["regions"]}
    return all(
        any(e["ipv4"] == r.address for e in listing[r.name]["endpoints"]) for r in REGIONS
    )


def _dns_answers(s: UpSettings) -> bool:
    import dns.exception
    import dns.message
    import dns.query

    query = dns.message.make_query(f"{s.host}.{s.zone}", "A")
    try:
        return bool(dns.query.udp(query, "127.0.0.1", port=s.dns_port, timeout=0.5).answer)
    except dns.exception.DNSException:
        return False


def run_up(settings: UpSettings, out: Output | None = None) -> None:
    out = out or Output()
    stack = Stack(settings, out)
    stopping = False

    def interrupt(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    # Both, explicitly: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        admin = stack.start()
        s = settings
        eu = next(r for r in REGIONS if r.name == "eu-west")
        host = f"{s.host}.{s.zone.rstrip('.')}"
        out.event(
            "ready",
            f"edge up: control plane http://127.0.0.1:{s.control_port}/, "
            f"regions {', '.join(f'{r.name} ({r.address})' for r in REGIONS)}, "
            f"DNS 127.0.0.1:{s.dns_port}",
            control_url=f"http://127.0.0.1:{s.control_port}", admin_token=admin,
            dns=f"127.0.0.1:{s.dns_port}", host=host, node_port=s.node_port,
            regions={r.name: r.address for r in REGIONS}, logs=str(stack.logs),
            dashboard=f"http://127.0.0.1:{s.control_port}/dashboard/",
        )
        if not out.json:  # the how-to for people; scripts have it all in the ready event
            print(
                f"\n  dig @127.0.0.1 -p {s.dns_port} {host} A "
                "+subnet=81.2.69.0/24      # a London client: eu-west\n"
                f"  curl --resolve {host}:{s.node_port}:{eu.address} "
                f"http://{host}:{s.node_port}/\n"
                f"  export EDGE_CONTROL_URL=http://127.0.0.1:{s.control_port} EDGE_TOKEN={admin}\n"
                f"  edge status; edge regions; edge region drain eu-west --over 30s\n"
                f"  dashboard: http://127.0.0.1:{s.control_port}/dashboard/ (token: EDGE_TOKEN)\n\n"
                f"logs in {stack.logs}; Ctrl-C stops everything.",
                flush=True,
            )
        while all(proc.poll() is None for _, proc in stack.procs):
            time.sleep(0.5)
        dead = [name for name, proc in stack.procs if proc.poll() is not None]
        out.event("exited", f"edge up: {', '.join(dead)} exited; stopping", processes=dead)
    except KeyboardInterrupt:
        pass
    finally:
        with out.spinner("stopping"):
            stack.stop()
        out.event("stopped", "edge up: stopped")
