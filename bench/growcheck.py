"""What the rewrites before a compile add to loading a component: memory.grow checks
(edge/sandbox/growcheck.py) and clock waits given 0 (edge/sandbox/waitclamp.py).

It runs only when a component is compiled (a compile cache miss), so it is set beside the
compile it precedes: for the C, Python and JS hello, each rewrite's wall time (median and worst
of `--rounds`) and one compile of the rewritten component in a fresh engine.

    .venv/bin/python -m bench.growcheck [--rounds 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from wasmtime import component

from edge.build import build_function
from edge.sandbox import growcheck, waitclamp
from edge.sandbox.engine import EngineSettings, SandboxEngine

from .common import print_table, write_results

EXAMPLES = Path(__file__).resolve().parents[1] / "sdk" / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    rows = []
    with SandboxEngine(EngineSettings(pool_total_instances=8)) as sandbox:
        for lang in ("c", "python", "js"):
            wasm = build_function(EXAMPLES / lang / "hello").read_bytes()
            times_ms = []
            for _ in range(args.rounds):
                started = time.perf_counter()
                result = growcheck.instrument(wasm)
                times_ms.append((time.perf_counter() - started) * 1000)
            clamp_ms, again_ms = [], []
            for _ in range(args.rounds):
                waitclamp._SITES.clear()  # a code section not seen before
                started = time.perf_counter()
                clamped = waitclamp.clamp(wasm)
                clamp_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                waitclamp.clamp(wasm)  # the same code again (the next function on this SDK)
                again_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            component.Component(sandbox.engine_for(len(wasm)), result.wasm)
            compile_ms = (time.perf_counter() - started) * 1000
            rows.append(
                {
                    "component": f"hello-{lang}",
                    "size_mib": round(len(wasm) / 2**20, 2),
                    "modules_rewritten": result.modules,
                    "grow_sites": result.sites,
                    "skipped": len(result.skipped),
                    "bytes_added": len(result.wasm) - len(wasm),
                    "rewrite_p50_ms": round(statistics.median(times_ms), 2),
                    "rewrite_max_ms": round(max(times_ms), 2),
                    "wait_sites": clamped.sites,
                    "clamp_p50_ms": round(statistics.median(clamp_ms), 2),
                    "clamp_max_ms": round(max(clamp_ms), 2),
                    "clamp_seen_code_p50_ms": round(statistics.median(again_ms), 2),
                    "compile_ms": round(compile_ms, 1),
                }
            )
    print_table("rewrites per component load (cache miss)", rows)
    path = write_results("growcheck", rows, {"rounds": args.rounds})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
