"""HTTP throughput: the edge node serving the C hello vs a bare Starlette hello app.

Both run on Hypercorn with the same settings (edge.node.server), one process each, and are
loaded by the same generator in the same run, alternating, so the ratio is fair. The load
generator is wrk (Debian package) when installed, else an in-repo asyncio client.
Target (issue 2): ratio ≥ 0.85. A third server, the node with its sandbox call replaced by a
fixed answer (bench/canned_node.py), shows how much of the gap is the call itself; a fourth,
the C hello opted in to `[instance] policy = "reuse"`, what giving up a fresh instance per
request buys; a fifth, the node with `[sandbox] invoke = "python"`, what the native request
path saves. Each server's CPU time per request (user + system, from /proc, over the load
runs) is reported beside its requests/s: on a machine shared with other jobs requests/s move
with the load, CPU per request much less, and their ratio is what the throughput ratio would
be on an otherwise idle core. Besides the ratio of medians, each round's node/bare ratio (the
two loaded back to back) is reported, and their median: the least moved by the machine's spells.
`--tickers native,python` runs instead one node per epoch ticker
(see edge.sandbox.ticker) beside bare Starlette, alternating, and reports their ratios.

    .venv/bin/python -m bench.http [--seconds S] [--connections C] [--rounds R] [--tickers K,K]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from edge.build import build_function
from edge.sandbox.ticker import NATIVE, PYTHON, TICKERS

from .common import print_table, write_results

REPO = Path(__file__).resolve().parents[1]
# The node with its sandbox call replaced by a fixed answer: what the rest of the node costs.
CANNED = "edge node, sandbox call canned (bench only)"
# The C hello opted in to instance reuse: not the default isolation, shown for the trade-off.
REUSE = "edge node, C hello with instance reuse (opt-in)"
# The node with the request path in Python (`[sandbox] invoke = "python"`): what the native
# helper (edge.sandbox.native_invoke) saves.
PY_INVOKE = "edge node, C hello, python invoke"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early ({url})")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} not ready")


def start_edge_node(
    workdir: Path,
    canned: bool = False,
    reuse: bool = False,
    ticker: str = NATIVE,
    invoke: str = NATIVE,
) -> tuple[subprocess.Popen[bytes], str]:
    """`canned`: the node with its sandbox call replaced by a fixed answer (bench.canned_node).
    `reuse`: the C hello with `[instance] policy = "reuse"` in its edge.toml (opt-in).
    `ticker`: its epoch ticker (`[sandbox] ticker`); `invoke`: its request path (`invoke`)."""
    component = build_function(REPO / "sdk" / "examples" / "c" / "hello")
    port = free_port()
    name = "canned" if canned else "reuse" if reuse else f"node-{ticker}-{invoke}"
    workdir = workdir / name
    workdir.mkdir(parents=True, exist_ok=True)
    if reuse:  # a copy of the built project whose edge.toml opts in
        project = shutil.copytree(component.parent.parent, workdir / "project")
        with (project / "edge.toml").open("a") as f:
            f.write('\n[instance]\npolicy = "reuse"\n')
        component = project / "build" / component.name
    config = workdir / "node.toml"
    config.write_text(
        f'[node]\nid = "bench"\nregion = "local"\nlisten = "127.0.0.1:{port}"\n'
        f'cache_dir = "{workdir / "compiled"}"\n\n'
        f'[sandbox]\nticker = "{ticker}"\ninvoke = "{invoke}"\n\n'
        f'[[function]]\nproject = "{component.parent.parent}"\n\n'
        f'[[route]]\nroute = "*/"\nfunction = "{_name(component)}"\n'
    )
    command = ["bench.canned_node"] if canned else ["edge", "node"]
    proc = subprocess.Popen(
        [sys.executable, "-m", *command, "--config", str(config)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
    if (ready["epoch_ticker"], ready["invoke"]) != (ticker, invoke):
        proc.terminate()
        raise SystemExit(f"asked for the {ticker} epoch ticker and the {invoke} request path, "
                         f"the node runs {ready['epoch_ticker']} and {ready['invoke']}")
    return proc, f"http://127.0.0.1:{port}/"


def _name(component: Path) -> str:
    from edge.config.function import load_function_config

    return load_function_config(component.parent.parent).name


def start_bare() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_app", f"127.0.0.1:{port}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_ready(f"http://127.0.0.1:{port}/", proc)
    return proc, f"http://127.0.0.1:{port}/"


_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0, "m": 60_000_000.0}


def _us(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)", text)
    assert m, text
    return float(m.group(1)) * _UNITS[m.group(2)]


def _percentile_us(out: str, q: int) -> float:
    # The "Latency Distribution" lines look like "     50%  612.00us".
    m = re.search(rf"^\s+{q}%\s+(\S+)\s*$", out, re.M)
    if m is None:
        raise SystemExit(f"no {q}% line in wrk's output:\n{out}")
    return _us(m.group(1))


_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU time of process `pid` so far."""
    # Fields after the command name (which may hold spaces), counted from field 3.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def context_switches(pid: int) -> int:
    """Context switches of process `pid`'s threads so far (voluntary and not): a thread that
    hands the GIL to another, or sleeps for it, adds one each time."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:  # a thread that ended meanwhile
            continue
        total += sum(int(m) for m in re.findall(r"ctxt_switches:\s+(\d+)", text))
    return total


def run_wrk(url: str, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = _percentile_us(out, 50)
    p99 = _percentile_us(out, 99)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "requests": total,
        "p50_us": p50,
        "p99_us": p99,
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


def run_asyncio_client(url: str, seconds: int, connections: int) -> dict[str, float]:
    async def go() -> dict[str, float]:
        latencies: list[float] = []
        bad = 0
        stop = time.monotonic() + seconds
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(limits=limits) as client:

            async def worker() -> None:
                nonlocal bad
                while time.monotonic() < stop:
                    t0 = time.perf_counter()
                    r = await client.get(url)
                    latencies.append((time.perf_counter() - t0) * 1e6)
                    bad += r.status_code != 200

            await asyncio.gather(*(worker() for _ in range(connections)))
        ordered = sorted(latencies)
        return {
            "rps": len(latencies) / seconds,
            "requests": float(len(latencies)),
            "p50_us": statistics.median(ordered),
            "p99_us": ordered[int(0.99 * (len(ordered) - 1))],
            "non_2xx": float(bad),
        }

    return asyncio.run(go())


Load = Callable[[str, int, int], dict[str, float]]
Servers = dict[str, tuple[subprocess.Popen[bytes], str]]
Results = dict[str, list[dict[str, float]]]


def alternate(servers: Servers, args: argparse.Namespace, load: Load) -> Results:
    """Each server loaded in turn, `args.rounds` times (so drift hits all alike); then stopped."""
    try:
        results: Results = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, (proc, url) in servers.items():
                before, switches = cpu_s(proc.pid), context_switches(proc.pid)
                run = load(url, args.seconds, args.connections)
                requests = max(run["requests"], 1)
                run["cpu_us"] = (cpu_s(proc.pid) - before) / requests * 1e6
                run["switches"] = (context_switches(proc.pid) - switches) / requests
                results[name].append(run)
        return results
    finally:
        for p, _ in servers.values():
            p.terminate()
            p.wait(timeout=10)


def table_rows(results: Results) -> list[dict[str, Any]]:
    return [
        {
            "server": name,
            "rps_median": round(statistics.median(r["rps"] for r in runs)),
            "cpu_us_per_request": round(statistics.median(r["cpu_us"] for r in runs), 1),
            "switches_per_request": round(statistics.median(r["switches"] for r in runs), 3),
            "p50_us": round(statistics.median(r["p50_us"] for r in runs)),
            "p99_us": round(statistics.median(r["p99_us"] for r in runs)),
            "non_2xx": int(sum(r["non_2xx"] for r in runs)),
        }
        for name, runs in results.items()
    ]


def compare_tickers(tickers: list[str], args: argparse.Namespace, load: Load) -> None:
    """One node per epoch ticker and bare Starlette, alternating; every round's numbers are
    kept in the JSON (the spread matters on a shared machine)."""
    with tempfile.TemporaryDirectory() as tmp:
        servers: Servers = {
            f"edge node (C hello), {t} ticker": start_edge_node(Path(tmp), ticker=t)
            for t in tickers
        }
        servers["bare Starlette"] = start_bare()
        results = alternate(servers, args, load)
    rows = table_rows(results)
    bare = rows[-1]
    for row in rows[:-1]:
        row["ratio_over_bare"] = round(row["rps_median"] / bare["rps_median"], 3)
        row["cpu_ratio"] = round(bare["cpu_us_per_request"] / row["cpu_us_per_request"], 3)
    extra = {"seconds": args.seconds, "connections": args.connections, "rounds": args.rounds}
    path = write_results("http_tickers", rows, {**extra, "tickers": tickers, "runs": results})
    print_table(f"HTTP requests/s by epoch ticker, {args.connections} connections", rows)
    a, b = rows[0], rows[min(1, len(rows) - 2)]
    rps = a["rps_median"] / b["rps_median"]
    cpu = a["cpu_us_per_request"] / b["cpu_us_per_request"]
    print(f"{a['server']} / {b['server']}: req/s {rps:.3f}, CPU per request {cpu:.3f}")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tickers", default="", help=f"comma-separated, of {TICKERS}")
    args = parser.parse_args()
    tickers = args.tickers.split(",") if args.tickers else []
    if any(t not in TICKERS for t in tickers):
        parser.error(f"--tickers: a comma-separated list of {', '.join(TICKERS)}")
    generator = "wrk" if shutil.which("wrk") else "asyncio-httpx"
    load = run_wrk if generator == "wrk" else run_asyncio_client
    if tickers:
        compare_tickers(tickers, args, load)
        return
    with tempfile.TemporaryDirectory() as tmp:
        servers = {
            "edge node (C hello)": start_edge_node(Path(tmp)),
            "bare Starlette": start_bare(),
            CANNED: start_edge_node(Path(tmp), canned=True),
            REUSE: start_edge_node(Path(tmp), reuse=True),
            PY_INVOKE: start_edge_node(Path(tmp), invoke=PYTHON),
        }
        results = alternate(servers, args, load)
    rows = table_rows(results)
    ratio = rows[0]["rps_median"] / rows[1]["rps_median"]
    # The node and bare Starlette are loaded one after the other in each round: a round's own
    # ratio is the least touched by the machine's slower and faster spells.
    node_runs, bare_runs = results["edge node (C hello)"], results["bare Starlette"]
    paired = sorted(n["rps"] / b["rps"] for n, b in zip(node_runs, bare_runs, strict=True))
    canned_ratio = rows[2]["rps_median"] / rows[1]["rps_median"]
    reuse_ratio = rows[3]["rps_median"] / rows[1]["rps_median"]
    python_ratio = rows[4]["rps_median"] / rows[1]["rps_median"]
    cpu_ratio = rows[1]["cpu_us_per_request"] / rows[0]["cpu_us_per_request"]
    canned_cpu_ratio = rows[1]["cpu_us_per_request"] / rows[2]["cpu_us_per_request"]
    path = write_results(
        "http",
        rows,
        {
            "generator": generator,
            "seconds": args.seconds,
            "connections": args.connections,
            "rounds": args.rounds,
            "ratio_edge_over_bare": round(ratio, 3),
            "ratio_edge_over_bare_paired_median": round(statistics.median(paired), 3),
            "ratio_edge_over_bare_paired": [round(r, 3) for r in paired],
            "ratio_canned_over_bare": round(canned_ratio, 3),
            "ratio_reuse_over_bare": round(reuse_ratio, 3),
            "ratio_python_invoke_over_bare": round(python_ratio, 3),
            # Bare Starlette's CPU per request over the node's: the ratio on an idle core.
            "cpu_ratio_edge_over_bare": round(cpu_ratio, 3),
            "cpu_ratio_canned_over_bare": round(canned_cpu_ratio, 3),
            "target_ratio": 0.85,
            "runs": results,
        },
    )
    print_table(f"HTTP requests/s, {generator}, {args.connections} connections", rows)
    print(f"ratio edge/bare = {ratio:.3f} (target ≥ 0.85); without the sandbox call "
          f"{canned_ratio:.3f}; with instance reuse (opt-in) {reuse_ratio:.3f}; with the "
          f"python request path {python_ratio:.3f}")
    print(f"ratio edge/bare round by round (each pair loaded back to back): median "
          f"{statistics.median(paired):.3f}, from {paired[0]:.3f} to {paired[-1]:.3f}")
    print(f"by CPU per request (bare/node): {cpu_ratio:.3f}; without the sandbox call "
          f"{canned_cpu_ratio:.3f}; wrote {path}")


if __name__ == "__main__":
    main()
