"""Noisy neighbours: how long a hello waits while another function on the same node is flooded
with slow requests (edge.node.fairshare).

Two edge nodes run side by side, the same functions on each: one with the default share per
function (`[node] function_workers = 0`), one where a function may take every worker
(`function_workers` = `workers`: waiters still go in fair order, fewest running first). Each
round floods one node, then the other: `--busy` requests of a Python function spinning for
300 ms while a Python hello is asked `--probes` times one after another, then `--loops`
requests of a C function looping to its 100 ms deadline while the C hello is asked. Reported:
the hellos' latency (median, p90, max over all rounds), the flood's outcomes and how long it
took. No target: the issue asks that a healthy function keep answering beside hostile ones.

    .venv/bin/python -m bench.neighbours [--rounds R] [--busy N] [--loops N] [--probes N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from edge.build import build_function

from .common import percentile, print_table, write_results
from .http import free_port, wait_ready

REPO = Path(__file__).resolve().parents[1]
FUNCTIONS = {  # route -> project
    "/busy": REPO / "tests" / "fixtures" / "functions" / "busy",
    "/loop": REPO / "tests" / "fixtures" / "functions" / "loop",
    "/py": REPO / "sdk" / "examples" / "python" / "hello",
    "/": REPO / "sdk" / "examples" / "c" / "hello",
}
NAMES = {"/busy": "busy", "/loop": "loop", "/py": "hello-python", "/": "hello-c"}
WORKERS = 16
FLOODS = [("python", "/busy?ms=300", "/py"), ("c", "/loop", "/")]


def start_node(
    workdir: Path, label: str, function_workers: int
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    where = workdir / label
    where.mkdir(parents=True, exist_ok=True)
    text = (
        f'[node]\nid = "bench-{label}"\nregion = "local"\nlisten = "127.0.0.1:{port}"\n'
        f'cache_dir = "{workdir / "compiled"}"\nworkers = {WORKERS}\n'
        f"function_workers = {function_workers}\nqueue_timeout_ms = 60000\n\n"
    )
    for route, project in FUNCTIONS.items():
        text += f'[[function]]\nproject = "{project}"\n'
        text += f'[[route]]\nroute = "*{route}"\nfunction = "{NAMES[route]}"\n'
    (where / "node.toml").write_text(text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "node", "--config", str(where / "node.toml")],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/readyz", proc, timeout_s=300)
    return proc, url


async def flood(url: str, path: str, probe: str, n: int, probes: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=n + 8)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await client.get(probe)
        started = time.perf_counter()
        flooding = [asyncio.create_task(client.get(path)) for _ in range(n)]
        await asyncio.sleep(0.1)
        waits = []
        for _ in range(probes):
            t0 = time.perf_counter()
            r = await client.get(probe)
            waits.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise SystemExit(f"{probe} answered {r.status_code} during the flood: {r.text}")
        answers = await asyncio.gather(*flooding)
        return {
            "waits_ms": waits,
            "statuses": Counter(r.status_code for r in answers),
            "flood_s": time.perf_counter() - started,
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--busy", type=int, default=48)
    parser.add_argument("--loops", type=int, default=64)
    parser.add_argument("--probes", type=int, default=10)
    args = parser.parse_args()
    for project in FUNCTIONS.values():
        build_function(project)
    sizes = {"python": args.busy, "c": args.loops}
    with tempfile.TemporaryDirectory() as tmp:
        nodes = {
            "default share": start_node(Path(tmp), "share", 0),
            "no share": start_node(Path(tmp), "all", WORKERS),
        }
        try:
            for _, url in nodes.values():  # compiles tier up; first requests warm the pools
                time.sleep(3)
                for _lang, path, probe in FLOODS:
                    asyncio.run(flood(url, path, probe, 4, 2))
            runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for _ in range(args.rounds):
                for label, (_, url) in nodes.items():
                    for lang, path, probe in FLOODS:
                        out = asyncio.run(flood(url, path, probe, sizes[lang], args.probes))
                        runs.setdefault((label, lang), []).append(out)
        finally:
            for proc, _ in nodes.values():
                proc.terminate()
                proc.wait(10)
    rows = []
    for (label, lang), outs in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        waits = [w for o in outs for w in o["waits_ms"]]
        statuses: Counter[int] = Counter()
        for o in outs:
            statuses.update(o["statuses"])
        rows.append({
            "flood": f"{lang}: {sizes[lang]} x {FLOODS[0][1] if lang == 'python' else '/loop'}",
            "node": label,
            "hello_p50_ms": round(statistics.median(waits), 1),
            "hello_p90_ms": round(percentile(waits, 90), 1),
            "hello_max_ms": round(max(waits), 1),
            "flood_statuses": dict(sorted(statuses.items())),
            "flood_s_median": round(statistics.median(o["flood_s"] for o in outs), 2),
        })  # fmt: skip
    print_table("A hello beside a flooded function (same node)", rows)
    path = write_results("neighbours", rows, {"rounds": args.rounds, "workers": WORKERS})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
