"""Deploy and rollback convergence: from the API call until all N nodes serve the new version.

A control plane and N follower nodes, each its own process on 127.0.0.1 (they share one
compile-cache directory, as nodes on one host would). Each round alternates between two builds
of the C hello with different bodies; "serving" is checked over HTTP on every node, polled
concurrently every 20 ms from the moment the API call is made. A background loop requests every
node throughout and counts failures. Targets (issue 3): p99 ≤ 1 s for deploy and rollback at
N = 50; zero failed requests.

    .venv/bin/python -m bench.convergence [--nodes 10 50] [--rounds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from edge.build import build_function
from edge.config.toml_fields import load_toml
from edge.control.client import ControlClient

from .common import percentile, print_table, write_results

REPO = Path(__file__).resolve().parents[1]
FUNCTION = "hello-c"
# Each node is polled this often: faster polling by 50 pollers would itself load the 2 cores.
POLL_S = 0.02


def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [int(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ports


def wait(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (httpx.HTTPError, OSError, ValueError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} not ready after {timeout_s}s")


def variant(tmp: Path, text: str) -> tuple[bytes, dict[str, object]]:
    project = tmp / text.replace(" ", "-")
    shutil.copytree(
        REPO / "sdk" / "examples" / "c" / "hello", project, ignore=shutil.ignore_patterns("build")
    )
    src = project / "main.c"
    src.write_text(src.read_text().replace("Hello from C!", text))
    return build_function(project).read_bytes(), load_toml(project / "edge.toml")


class Cluster:
    def __init__(self, tmp: Path, n: int) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        cp_port, *node_ports = free_ports(n + 1)
        data = tmp / "control"
        self._spawn(["control", "--data", str(data), "--listen", f"127.0.0.1:{cp_port}"])
        self.control = f"http://127.0.0.1:{cp_port}"
        wait(lambda: (data / "tokens.json").exists(), 30, "control plane")
        self.tokens = json.loads((data / "tokens.json").read_text())
        wait(lambda: httpx.get(self.control + "/v1/status").status_code == 401, 30, "control")
        self.nodes = []
        for i, port in enumerate(node_ports):
            config = tmp / f"node{i}.toml"
            config.write_text(
                f'[node]\nid = "n{i}"\nregion = "r{i % 3}"\nlisten = "127.0.0.1:{port}"\n'
                f'cache_dir = "{tmp / "compiled"}"\nworkers = 4\n\n'
                f'[control]\nurl = "{self.control}"\ntoken = "{self.tokens["node"]}"\n'
                f'public_key = "{self.tokens["public_key"]}"\nstate_dir = "{tmp / f"state{i}"}"\n'
            )
            self._spawn(["node", "--config", str(config)])
            self.nodes.append(f"http://127.0.0.1:{port}")
        for url in self.nodes:
            wait(lambda u=url: httpx.get(u + "/healthz").status_code == 200, 120, url)

    def _spawn(self, args: list[str]) -> None:
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "edge", *args],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def rss_mib(self) -> float:
        total = 0
        for p in self.procs:
            try:
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


async def until_all_serve(nodes: list[str], body: str, started: float, limit_s: float) -> float:
    async with httpx.AsyncClient(timeout=2, limits=httpx.Limits(max_connections=200)) as http:

        async def one(url: str) -> None:
            while time.monotonic() - started < limit_s:
                try:
                    if (await http.get(url + "/")).text == body:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(POLL_S)
            raise TimeoutError(url)

        await asyncio.gather(*(one(u) for u in nodes))
    return time.monotonic() - started


class Background:
    """A bounded steady loop over every node, counting anything but a 200."""

    def __init__(self, nodes: list[str]) -> None:
        self.nodes, self.ok, self.failed = nodes, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        deadline = time.monotonic() + 1800
        with httpx.Client(timeout=10) as http:
            i = 0
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    r = http.get(self.nodes[i % len(self.nodes)] + "/")
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.ok += ok
                self.failed += not ok
                i += 1
                time.sleep(0.002)


def run(n: int, rounds: int, tmp: Path, versions: list[tuple[bytes, dict[str, object]]]) -> dict:
    cluster = Cluster(tmp / f"n{n}", n)
    try:
        with ControlClient(cluster.control, cluster.tokens["admin"]) as client:
            numbers = [
                int(client.upload_version(FUNCTION, data, manifest, f"v{i}")["number"])
                for i, (data, manifest) in enumerate(versions)
            ]
            bodies = ["alpha\n", "beta\n"]
            client.deploy(FUNCTION, numbers[0], ["*/"])
            asyncio.run(until_all_serve(cluster.nodes, bodies[0], time.monotonic(), 120))
            background = Background(cluster.nodes)
            background.thread.start()
            deploy_s, rollback_s, reported_ms = [], [], []
            try:
                for r in range(rounds):
                    started = time.monotonic()
                    client.deploy(FUNCTION, numbers[1], None)
                    deploy_s.append(
                        asyncio.run(until_all_serve(cluster.nodes, bodies[1], started, 30))
                    )
                    started = time.monotonic()
                    result = client.rollback(FUNCTION, None)
                    rollback_s.append(
                        asyncio.run(until_all_serve(cluster.nodes, bodies[0], started, 30))
                    )
                    time.sleep(0.2)  # let reports land
                    status = client.status()
                    conv = [
                        x["convergence_ms"]
                        for x in status["nodes"]
                        if x["convergence_ms"] is not None
                        and x["applied_revision"] >= int(result["revision"])
                    ]
                    reported_ms.append(max(conv) if conv else float("nan"))
                    print(
                        f"N={n} round {r + 1}/{rounds}: deploy {deploy_s[-1] * 1000:.0f} ms, "
                        f"rollback {rollback_s[-1] * 1000:.0f} ms",
                        file=sys.stderr,
                    )
            finally:
                background.stop.set()
                background.thread.join()
        rss = cluster.rss_mib()
    finally:
        cluster.stop()
    ms = lambda xs, q: round(percentile([x * 1000 for x in xs], q))  # noqa: E731
    return {
        "nodes": n,
        "mode": "one process per node",
        "rounds": rounds,
        "deploy_p50_ms": ms(deploy_s, 50),
        "deploy_p99_ms": ms(deploy_s, 99),
        "rollback_p50_ms": ms(rollback_s, 50),
        "rollback_p99_ms": ms(rollback_s, 99),
        "reported_max_ms_p50": round(percentile(reported_ms, 50)),
        "requests_ok": background.ok,
        "requests_failed": background.failed,
        "rss_total_mib": round(rss),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        versions = [variant(tmp, "alpha"), variant(tmp, "beta")]
        rows = [run(n, args.rounds, tmp, versions) for n in args.nodes]
    path = write_results(
        "convergence", rows, {"targets": {"p99_ms_at_50": 1000, "failed_requests": 0}}
    )
    print_table("Deploy / rollback: API call → every node serves the new version", rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
