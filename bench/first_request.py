"""First answers after a node starts, by `[sandbox] warm_up_threads` (0: off, 1, 2).

A Python or JavaScript function's first requests used to pay their pool slot's first reset
(~3,200 page faults when the store closes, see LoadedFunction._warm_slot). Each round starts one
node per setting, in turn, on a compile cache filled beforehand (the code is mapped, not
compiled), and times the Python echo's and the JS hello's first answers (a new connection each)
and five later ones, and reads the node's resident memory once it is ready.

    .venv/bin/python -m bench.first_request [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from edge.build import build_function

from .common import print_table, write_results
from .convergence import REPO, free_ports, spawn, stop_all

SETTINGS = (0, 1, 2)
FUNCTIONS = {"py": REPO / "sdk" / "examples" / "python" / "echo",
             "js": REPO / "sdk" / "examples" / "js" / "hello"}  # fmt: skip
LATER = 5
READY_TIMEOUT_S = 300.0


def node_toml(port: int, cache: Path, threads: int, tier_up: bool) -> str:
    text = (
        f'[node]\nlisten = "127.0.0.1:{port}"\ncache_dir = "{cache}"\n'
        f"[sandbox]\nwarm_up_threads = {threads}\ntier_up = {str(tier_up).lower()}\n"
    )
    for path, project in FUNCTIONS.items():
        text += f'[[function]]\nproject = "{project}"\n'
        name = project.name + "-" + ("python" if path == "py" else "js")
        text += f'[[route]]\nroute = "*/{path}"\nfunction = "{name}"\n'
    return text


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_node(tmp: Path, cache: Path, threads: int, tier_up: bool = False) -> dict[str, float]:
    """Starts a node, times each function's first and later answers (ms), stops it."""
    (port,) = free_ports(1)
    config = tmp / f"node-{port}.toml"
    config.write_text(node_toml(port, cache, threads, tier_up))
    proc = spawn("node", ["-m", "edge", "node", "--config", str(config)], tmp / f"{port}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.popen.poll() is not None:
                raise SystemExit(f"node not ready:\n{proc.log.read_text()[-2000:]}")
            time.sleep(0.05)
        out = {"rss_mib": rss_mib(proc.popen.pid)}
        for path in FUNCTIONS:
            times = []
            for _ in range(1 + LATER):
                with httpx.Client() as client:  # a new connection, as a first visitor's
                    started = time.perf_counter()
                    answer = client.get(f"{url}/{path}")
                    times.append((time.perf_counter() - started) * 1000)
                if answer.status_code != 200:
                    raise SystemExit(f"{path}: {answer.status_code} {answer.text[:200]}")
                time.sleep(0.05)
            out[f"{path}_first_ms"] = times[0]
            out[f"{path}_later_ms"] = statistics.median(times[1:])
        return out
    finally:
        stop_all([proc])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for project in FUNCTIONS.values():
        build_function(project)
    runs: dict[int, list[dict[str, float]]] = {t: [] for t in SETTINGS}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        cache = tmp / "compiled"
        one_node(tmp, cache, 0)  # fills the cache: Cranelift code before ready, no tier-up
        for _ in range(args.rounds):
            for threads in SETTINGS:  # alternating, so a slow spell hits every setting
                runs[threads].append(one_node(tmp, cache, threads))
    rows = []
    for threads, samples in runs.items():
        row: dict[str, object] = {"warm_up_threads": threads}
        for key in samples[0]:
            values = [s[key] for s in samples]
            row[key] = f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"
        rows.append(row)
    print_table("First answers after a node starts: median (min-max) of the rounds", rows)
    path = write_results(
        "first_request", rows, {"rounds": args.rounds, "runs": {str(k): v for k, v in runs.items()}}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
