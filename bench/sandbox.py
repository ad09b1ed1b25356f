"""Sandbox overhead per request, no HTTP: fresh instance + call + marshalling.

For the C hello and the Python hello, fresh and reuse, with the pooling allocator on and off,
and the C hello's fresh requests on the native and the Python request path (see
edge/sandbox/native_invoke.py), measured side by side in one run. Targets (issue 2): C ≤ 40 µs
p50, Python ≤ 1 ms p50 fresh.
`prepared`: fresh instances were made ahead of requests on a background thread (see
edge/sandbox/prepare.py); then p50 is the latency a request sees, and `cpu_us_per_req` (all
threads) is what each request still costs the machine.

    .venv/bin/python -m bench.sandbox [--iterations N]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from edge.build import build_function
from edge.config.function import InstancePolicy, load_function_config
from edge.sandbox import abi, host
from edge.sandbox.compile_cache import CompileCache
from edge.sandbox.engine import EngineSettings, SandboxEngine
from edge.sandbox.function import LoadedFunction

from .common import print_table, summary_us, write_results

EXAMPLES = Path(__file__).resolve().parents[1] / "sdk" / "examples"
GAP_MS = 2  # the spaced-out sequential row: one request every ~2 ms
REQUEST = abi.GuestRequest(
    method="GET",
    url="http://127.0.0.1:8787/",
    headers=[("host", "127.0.0.1:8787"), ("user-agent", "bench"), ("accept", "*/*")],
    body=b"",
    client_ip="127.0.0.1",
    region="local",
    node_id="bench",
    request_id="0123456789abcdef0123456789abcdef",
)


def measure(fn: LoadedFunction, iterations: int, gap_s: float = 0.0) -> tuple[list[int], float]:
    """Latency samples (ns) of back-to-back requests, and the process's CPU time per request
    (µs): with prepared instances, work moves to a background thread, and only the second
    number shows whether it went away or just off the request path. `gap_s`: idle time between
    requests (sequential traffic that is not back to back)."""

    def noop(_: host.LogLine) -> None:
        pass

    for _ in range(min(200, iterations)):  # warm caches and the pool's slots
        fn.invoke(REQUEST, host.Invocation(fn.name, "warm", {}, noop))
    samples = []
    gc.disable()
    cpu0 = time.process_time_ns()
    try:
        for _ in range(iterations):
            if gap_s:
                time.sleep(gap_s)
            t0 = time.perf_counter_ns()
            fn.invoke(REQUEST, host.Invocation(fn.name, "bench", {}, noop))
            samples.append(time.perf_counter_ns() - t0)
    finally:
        gc.enable()
    cpu_us = (time.process_time_ns() - cpu0) / iterations / 1000  # sleeping costs no CPU
    return samples, round(cpu_us, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--langs", default="c,python")
    args = parser.parse_args()
    rows = []
    for lang in args.langs.split(","):
        project = EXAMPLES / lang / "hello"
        wasm = build_function(project).read_bytes()
        base = load_function_config(project)
        # The C hello also on the Python request path (see native_invoke): what the helper
        # saves. Python functions import WASI and always take the Python path.
        paths = ("native", "python") if lang == "c" else ("native",)
        for pooling, invoke in [(p, i) for p in (True, False) for i in paths]:
            # No tier-up: the empty cache would serve the first rows from Winch code.
            settings = EngineSettings(pooling=pooling, tier_up=False, invoke=invoke)
            with SandboxEngine(settings) as engine:
                # On disk, as a node has it: deserialize_file maps the image copy-on-write; an
                # in-memory compile costs 300-600 µs more per fresh Python request.
                cache = CompileCache(engine, Path(tempfile.mkdtemp(prefix="edge-bench-")))
                for policy, gap_ms in (("fresh", 0), ("reuse", 0), ("fresh", GAP_MS)):
                    if gap_ms and lang == "c":
                        continue  # nothing is prepared for the C hello: same as back to back
                    if policy == "reuse" and invoke == "python":
                        continue  # reuse always takes the Python path: a row above has it
                    # The request path taken: native only for fresh instances of C functions.
                    native = lang == "c" and policy == "fresh" and invoke == "native"
                    config = replace(base, instance=InstancePolicy(policy, 1_000_000))
                    fn = LoadedFunction(engine, cache, wasm, config, lambda _: None)
                    n = args.iterations if lang == "c" else max(300, args.iterations // 5)
                    samples, cpu_us = measure(fn, n, gap_ms / 1000)
                    rows.append(
                        {
                            "function": f"{lang} hello",
                            "policy": policy,
                            "gap_ms": gap_ms,
                            "pooling": pooling,
                            "invoke": "native" if native else "python",
                            "prepared": fn.prepares_instances,
                            **summary_us(samples),
                            "cpu_us_per_req": cpu_us,
                        }
                    )
    targets = {"c_fresh_p50_us": 40, "python_fresh_p50_us": 1000}
    path = write_results("sandbox", rows, {"targets": targets})
    print_table("Sandbox overhead per request (fresh instance + call + marshalling)", rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
