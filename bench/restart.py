"""Static stability: a node restarted while the control plane is down, until it serves again.

A control plane and one follower node (separate processes on 127.0.0.1) serve the C hello;
then the control plane is killed, and the node is stopped and started again `--rounds` times.
Each round times from spawning the node's process to its first correct answer over HTTP
(polled every 5 ms), so Python's own start-up is included. Also timed, as the floor: spawning
`python -c "import edge.node.main"`. Target (issue 3): the node serves within a second.

    .venv/bin/python -m bench.restart [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from edge.control.client import ControlClient

from .common import percentile, print_table, write_results
from .convergence import FUNCTION, REPO, build_variant, free_ports, spawn, stop_all

POLL_S = 0.005


def until_serving(url: str, body: str, started: float, limit_s: float) -> float:
    with httpx.Client(timeout=1) as http:
        while time.monotonic() - started < limit_s:
            try:
                if http.get(url).text == body:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(POLL_S)
    raise SystemExit(f"the node did not serve within {limit_s} s")


def wait(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError, ValueError):
            pass
        time.sleep(0.05)
    raise SystemExit(f"{what} not ready after {timeout_s} s")


def import_floor_s() -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import edge.node.main"], cwd=REPO, check=True)
    return time.monotonic() - started


def run(rounds: int, tmp: Path) -> dict[str, object]:
    cp_port, node_port = free_ports(2)
    data = tmp / "control"
    control = spawn("control", ["-m", "edge", "control", "--data", str(data), "--listen",
                                f"127.0.0.1:{cp_port}"], tmp / "control.log")
    control_url = f"http://127.0.0.1:{cp_port}"
    wait(lambda: (data / "tokens.json").exists(), 30, "control plane")
    tokens = json.loads((data / "tokens.json").read_text())
    wait(lambda: httpx.get(control_url + "/v1/status").status_code == 401, 30, "control plane")
    config = tmp / "node.toml"
    config.write_text(
        f'[node]\nid = "solo"\nregion = "eu-west"\nlisten = "127.0.0.1:{node_port}"\n'
        f'cache_dir = "{tmp / "compiled"}"\n\n'
        f'[control]\nurl = "{control_url}"\ntoken = "{tokens["node"]}"\n'
        f'public_key = "{tokens["public_key"]}"\nstate_dir = "{tmp / "state"}"\n'
    )
    url = f"http://127.0.0.1:{node_port}/"
    node = spawn("node", ["-m", "edge", "node", "--config", str(config)], tmp / "node.log")
    samples: list[float] = []
    try:
        data_bytes, manifest = build_variant(tmp, "kept on disk\n")
        with ControlClient(control_url, tokens["admin"]) as client:
            number = int(client.upload_version(FUNCTION, data_bytes, manifest, "v1")["number"])
            client.deploy(FUNCTION, number, ["*/"])
        until_serving(url, "kept on disk\n", time.monotonic(), 120)
        control.popen.kill()
        control.popen.wait()
        for i in range(rounds):
            stop_all([node])
            started = time.monotonic()
            node = spawn("node", ["-m", "edge", "node", "--config", str(config)],
                         tmp / f"node{i}.log")
            samples.append(until_serving(url, "kept on disk\n", started, 30))
    finally:
        stop_all([node, control])
    floor = [import_floor_s() for _ in range(min(rounds, 5))]
    return {
        "rounds": rounds,
        "restart_p50_s": round(statistics.median(samples), 3),
        "restart_p99_s": round(percentile(samples, 99), 3),
        "restart_max_s": round(max(samples), 3),
        "import_floor_p50_s": round(statistics.median(floor), 3),
        "target_s": 1.0,
        "met": percentile(samples, 99) <= 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-bench-restart-") as tmp:
        row = run(args.rounds, Path(tmp))
    print_table("node restart with the control plane down (spawn to first answer)", [row])
    print(f"wrote {write_results('restart', [row], {'poll_s': POLL_S})}")


if __name__ == "__main__":
    main()
