"""Compile time and fresh-request cost per compiler, and the time a new version takes to serve.

Table 1, for the C, Python and JavaScript hello: the time to compile the component from its
bytes (no cache), then the sandbox cost of a fresh request (instance + call + marshalling) with
the compiled code, per compiler (Cranelift: nodes; Winch: `edge dev`), side by side in one run.

Table 2, for the Python and JavaScript hello: how long a node takes from loading a component it
has never compiled (empty compile cache) to its first answer, with tier-up on (Winch code
served at once, Cranelift's compiled in the background; see edge/sandbox/tiering.py) and off
(Cranelift compile first), in alternating rounds; with tier-up on, also when the function
reaches Cranelift code.

    .venv/bin/python -m bench.compile [--iterations N] [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from edge.build import build_function
from edge.config.function import FunctionConfig, load_function_config
from edge.sandbox import host
from edge.sandbox.compile_cache import CompileCache
from edge.sandbox.engine import COMPILERS, EngineSettings, SandboxEngine
from edge.sandbox.function import LoadedFunction

from .common import print_table, summary_us, write_results
from .sandbox import EXAMPLES, REQUEST, measure

TIER_UP_WAIT_S = 120.0


def compilers(iterations: int) -> list[dict[str, Any]]:
    rows = []
    for lang in ("c", "python", "js"):
        project = EXAMPLES / lang / "hello"
        wasm = build_function(project).read_bytes()
        config = load_function_config(project)
        for compiler in sorted(COMPILERS):
            # Instances are not made ahead here: the request pays for its own, as in dev. No
            # tier-up: each row measures one compiler's code.
            settings = EngineSettings(compiler=compiler, prepare_instances=False, tier_up=False)
            with SandboxEngine(settings) as engine:
                cache = CompileCache(engine, Path(tempfile.mkdtemp(prefix="edge-bench-")))
                started = time.perf_counter()
                fn = LoadedFunction(engine, cache, wasm, config, lambda _: None)
                compile_s = time.perf_counter() - started
                samples, cpu_us = measure(fn, iterations)
            rows.append(
                {
                    "function": f"{lang} hello",
                    "compiler": compiler,
                    "compile_s": round(compile_s, 2),
                    **summary_us(samples),
                    "cpu_us_per_req": cpu_us,
                }
            )
    return rows


def first_answer(wasm: bytes, config: FunctionConfig, tier_up: bool) -> tuple[float, float]:
    """Seconds from loading `wasm` into an empty cache to its first answer, and to its first
    answer from Cranelift code (the same with tier-up off)."""
    with SandboxEngine(EngineSettings(tier_up=tier_up)) as engine:
        cache = CompileCache(engine, Path(tempfile.mkdtemp(prefix="edge-bench-")))
        started = time.perf_counter()
        fn = LoadedFunction(engine, cache, wasm, config, lambda _: None)
        fn.invoke(REQUEST, host.Invocation(fn.name, "first", {}, lambda _: None))
        first_s = time.perf_counter() - started
        stop = started + TIER_UP_WAIT_S
        while fn.tier != "cranelift" and time.perf_counter() < stop:
            time.sleep(0.005)
        if fn.tier != "cranelift":
            raise RuntimeError(f"no tier-up within {TIER_UP_WAIT_S} s")
        return first_s, time.perf_counter() - started


def new_versions(rounds: int) -> list[dict[str, Any]]:
    rows = []
    for lang in ("python", "js"):
        project = EXAMPLES / lang / "hello"
        wasm = build_function(project).read_bytes()
        config = load_function_config(project)
        times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for _ in range(rounds):
            for tier_up in (True, False):  # alternating: load on the machine hits both alike
                times[tier_up].append(first_answer(wasm, config, tier_up))
        for tier_up in (False, True):
            firsts = [t[0] for t in times[tier_up]]
            tops = [t[1] for t in times[tier_up]]
            rows.append(
                {
                    "function": f"{lang} hello",
                    "tier_up": "on" if tier_up else "off",
                    "first_answer_s_p50": round(statistics.median(firsts), 2),
                    "first_answer_s_max": round(max(firsts), 2),
                    "on_cranelift_s_p50": round(statistics.median(tops), 2),
                    "rounds": rounds,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = compilers(args.iterations)
    first = new_versions(args.rounds)
    path = write_results("compile", rows, {"new_version": first})
    print_table("Compile time and fresh request cost by compiler", rows)
    print_table("A never-compiled component: load to first answer, tier-up on and off", first)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
