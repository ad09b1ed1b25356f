"""CPU per request of the node's ASGI app in process, without HTTP: where `bench.http`'s gap is.

Drives three ASGI apps directly with the request wrk sends (GET / with Host and a couple of
headers), in one process, alternating rounds so drift hits all alike:
    node, C hello       the production app (edge.node.app) serving the C hello, fresh instances
    node, call canned   the same app with the function's invoke replaced by a fixed answer
    bare Starlette      bench.bare_app's hello
and reports this thread's CPU time per request (time.thread_time), the whole process's (its
other threads too: the epoch ticker's, and the native workers' that run the C hello's requests,
see edge.sandbox.native_pool), wall time and this thread's page faults per request (getrusage
minflt). `--profile` adds a cProfile of the node's requests, sorted by own time.
`--tickers native,python` serves the C hello from one node per epoch ticker (see
edge.sandbox.ticker), alternating with the rest; each round starts once every other node's
ticker sleeps, so only the measured node's ticker runs. `--concurrency C` keeps C requests under
way at once, as a loaded server does: the event loop then never waits for the native workers,
and this thread's CPU per request is what bounds its requests/s (one at a time, it also pays
for waking up when each answer is ready).

    .venv/bin/python -m bench.hotpath [--requests N] [--rounds R] [--profile] [--tickers K,K]
                                      [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import resource
import statistics
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from bench.bare_app import app as bare_app
from bench.canned_node import ANSWER
from bench.http import REPO, _name
from edge.asgi import ASGIApp, Message
from edge.build import build_function
from edge.node.app import create_app
from edge.node.config import load_node_config
from edge.node.main import settle_heap
from edge.node.runtime import NodeRuntime
from edge.sandbox.function import LoadedFunction
from edge.sandbox.host import LogLine
from edge.sandbox.ticker import NATIVE, TICKERS

from .common import print_table, write_results

# What wrk sends by default is only Host; a browser-ish client adds a few more.
HEADERS = [
    (b"host", b"127.0.0.1:8787"),
    (b"user-agent", b"wrk/4.1.0"),
    (b"accept", b"*/*"),
]


def scope() -> dict[str, Any]:
    """A new scope per request, shaped as Hypercorn builds one for HTTP/1.1."""
    return {
        "type": "http",
        "asgi": {"spec_version": "2.1", "version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": list(HEADERS),
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8787),
        "extensions": {},
    }


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class _Sent:
    def __init__(self) -> None:
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]


async def _drive(app: ASGIApp, n: int) -> None:
    sent = _Sent()
    for _ in range(n):
        await app(scope(), _receive, sent)
        if sent.status != 200:
            raise SystemExit(f"answer {sent.status}, not 200")


async def _drive_at_once(app: ASGIApp, n: int, concurrency: int) -> None:
    await asyncio.gather(*(_drive(app, n // concurrency) for _ in range(concurrency)))


def measure(app: ASGIApp, n: int, concurrency: int = 1) -> dict[str, float]:
    n -= n % concurrency
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_drive_at_once(app, 200, concurrency))  # warm caches, set-up
        faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        cpu, process, wall = time.thread_time(), time.process_time(), time.perf_counter()
        loop.run_until_complete(_drive_at_once(app, n, concurrency))
        cpu = time.thread_time() - cpu
        process, wall = time.process_time() - process, time.perf_counter() - wall
        faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults
    finally:
        loop.close()
    return {
        "cpu_us": cpu / n * 1e6, "process_cpu_us": process / n * 1e6, "wall_us": wall / n * 1e6,
        "faults": faults / n,
    }  # fmt: skip


def quiet_tickers(runtimes: list[NodeRuntime], timeout_s: float = 5.0) -> None:
    """Until every ticker of `runtimes` sleeps (IDLE_TICKS after their last call)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(r.engine.ticker.stats().asleep for r in runtimes):
            return
        time.sleep(0.05)
    raise SystemExit("an idle node's epoch ticker did not fall asleep")


def node_runtime(workdir: Path, ticker: str = NATIVE) -> NodeRuntime:
    component = build_function(REPO / "sdk" / "examples" / "c" / "hello")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "node.toml"
    config.write_text(
        f'[node]\nid = "bench"\nregion = "local"\nlisten = "127.0.0.1:8787"\n'
        f'cache_dir = "{workdir / "compiled"}"\n\n[sandbox]\nticker = "{ticker}"\n\n'
        f'[[function]]\nproject = "{component.parent.parent}"\n\n'
        f'[[route]]\nroute = "*/"\nfunction = "{_name(component)}"\n'
    )
    lines: list[LogLine] = []
    runtime = NodeRuntime(load_node_config(config), lines.append)
    if runtime.engine.ticker_fallback:
        raise SystemExit(f"asked for the {ticker} ticker: {runtime.engine.ticker_fallback}")
    runtime.load_configured()
    return runtime


def canned_runtime(workdir: Path) -> NodeRuntime:
    runtime = node_runtime(workdir / "canned")
    for served in runtime.deployment.functions.values():
        for fn in served.loaded():
            if isinstance(fn, LoadedFunction):
                fn.invoke = lambda *_a, **_k: ANSWER  # type: ignore[method-assign]
                fn.pooled = lambda *_: None  # type: ignore[method-assign]
    return runtime


def profile(app: ASGIApp, n: int, top: int) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_drive(app, 200))
        prof = cProfile.Profile()
        coro: Coroutine[Any, Any, None] = _drive(app, n)
        prof.enable()
        loop.run_until_complete(coro)
        prof.disable()
    finally:
        loop.close()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--tickers", default=NATIVE, help=f"comma-separated, of {TICKERS}")
    parser.add_argument("--concurrency", type=int, default=1, help="requests under way at once")
    args = parser.parse_args()
    tickers = args.tickers.split(",")
    if not tickers or any(t not in TICKERS for t in tickers):
        parser.error(f"--tickers: a comma-separated list of {', '.join(TICKERS)}")
    with tempfile.TemporaryDirectory() as tmp:
        nodes = {t: node_runtime(Path(tmp) / f"node-{t}", t) for t in tickers}
        canned = canned_runtime(Path(tmp))
        settle_heap()  # as the node does once loaded
        named = {
            "node, C hello (fresh instance)" + (f", {t} ticker" if len(nodes) > 1 else ""): rt
            for t, rt in nodes.items()
        }
        runtimes = {**named, "node, sandbox call canned": canned}
        built: dict[str, ASGIApp] = {name: create_app(rt) for name, rt in runtimes.items()}
        built["bare Starlette"] = bare_app
        first = next(iter(built))
        if args.profile:
            profile(built[first], args.requests, 40)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in built}
        for _ in range(args.rounds):
            for name, app in built.items():
                quiet_tickers([rt for other, rt in runtimes.items() if other != name])
                gc.collect()
                runs[name].append(measure(app, args.requests, args.concurrency))
        for rt in runtimes.values():
            rt.close()
    rows = [
        {
            "app": name,
            "cpu_us_median": round(statistics.median(r["cpu_us"] for r in rs), 1),
            "cpu_us_min": round(min(r["cpu_us"] for r in rs), 1),
            "process_cpu_us_median": round(statistics.median(r["process_cpu_us"] for r in rs), 1),
            "wall_us_median": round(statistics.median(r["wall_us"] for r in rs), 1),
            "faults_per_request": round(statistics.median(r["faults"] for r in rs), 2),
        }
        for name, rs in runs.items()
    ]
    path = write_results(
        "hotpath", rows,
        {"requests": args.requests, "rounds": args.rounds, "headers": len(HEADERS),
         "tickers": tickers, "concurrency": args.concurrency, "runs": runs},
    )  # fmt: skip
    at_once = f", {args.concurrency} at once" if args.concurrency > 1 else ""
    print_table(f"ASGI app CPU per request, in process ({args.rounds} rounds of {args.requests}"
                f"{at_once})", rows)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
