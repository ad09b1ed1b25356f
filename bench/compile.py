"""Compile time and fresh-request cost per compiler, and the time a new version takes to serve.

Table 1, for the C, Python and JavaScript hello: the time to compile the component from its
bytes (no cache), then the sandbox cost of a fresh request (instance + call + marshalling) with
the compiled code, per compiler (Cranelift: nodes; Winch: `edge dev`), side by side in one run.

Table 2, for the Python and JavaScript hello: how long a node takes from loading a component it
has never compiled (empty compile cache) to its first answer, with tier-up on (Winch code
served at once, Cranelift's compiled in the background; see edge/sandbox/tiering.py) and off
(Cranelift compile first), in alternating rounds; when the function runs Cranelift code; and
the latency of requests 10 ms apart while the Cranelift compile runs (`meanwhile`), beside as
many once it is done (`after`).

    .venv/bin/python -m bench.compile [--iterations N] [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
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
GAP_S = 0.01  # between the requests served while the Cranelift compile runs


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
                rss_before = rss_mib()
                started = time.perf_counter()
                fn = LoadedFunction(engine, cache, wasm, config, lambda _: None)
                compile_s = time.perf_counter() - started
                rss_growth = rss_mib() - rss_before
                samples, cpu_us = measure(fn, iterations)
            rows.append(
                {
                    "function": f"{lang} hello",
                    "compiler": compiler,
                    "compile_s": round(compile_s, 2),
                    "rss_growth_mib": rss_growth,
                    **summary_us(samples),
                    "cpu_us_per_req": cpu_us,
                }
            )
    return rows


def rss_mib() -> int:
    """This process's resident memory: what a compile leaves behind shows here."""
    return status_kib("VmRSS") // 1024


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


@dataclass
class NewVersion:
    first_s: float  # load -> first answer
    cranelift_s: float  # load -> running Cranelift code
    during_ns: list[int]  # request latencies while the Cranelift compile runs (tier-up on)
    after_ns: list[int]  # as many, spaced alike, on Cranelift code once nothing compiles
    # What closing the baseline engine after the switch gave back (tier-up on), or None.
    freed_rss_mib: float | None = None
    freed_vm_gib: float | None = None


def first_answer(wasm: bytes, config: FunctionConfig, tier_up: bool) -> NewVersion:
    """Loads `wasm` into an empty cache, then requests GAP_S apart until it runs Cranelift
    code."""
    with SandboxEngine(EngineSettings(tier_up=tier_up)) as engine:
        cache = CompileCache(engine, Path(tempfile.mkdtemp(prefix="edge-bench-")))
        started = time.perf_counter()
        fn = LoadedFunction(engine, cache, wasm, config, lambda _: None)
        fn.invoke(REQUEST, host.Invocation(fn.name, "first", {}, lambda _: None))
        first_s = time.perf_counter() - started
        stop = started + TIER_UP_WAIT_S
        during = []
        while fn.tier != "cranelift" and time.perf_counter() < stop:
            during.append(spaced_request(fn))
        if fn.tier != "cranelift":
            raise RuntimeError(f"no tier-up within {TIER_UP_WAIT_S} s")
        cranelift_s = time.perf_counter() - started
        freed = baseline_freed(engine) if tier_up else (None, None)
        after = [spaced_request(fn) for _ in range(min(len(during), 300) if tier_up else 50)]
        return NewVersion(first_s, cranelift_s, during, after, *freed)


def baseline_freed(engine: SandboxEngine) -> tuple[float | None, float | None]:
    """RSS (MiB) and address space (GiB) given back when the ticker closes the baseline
    engine, no requests meanwhile; None if it was closed before this looked."""
    if not engine.baseline_open:
        return None, None
    rss, vm = status_kib("VmRSS"), status_kib("VmSize")
    stop = time.perf_counter() + 10
    while engine.baseline_open and time.perf_counter() < stop:
        time.sleep(0.01)
    if engine.baseline_open:
        raise RuntimeError("the baseline engine was not closed within 10 s")
    return (rss - status_kib("VmRSS")) / 1024, (vm - status_kib("VmSize")) / 1024**2


def spaced_request(fn: LoadedFunction) -> int:
    time.sleep(GAP_S)
    started = time.perf_counter_ns()
    fn.invoke(REQUEST, host.Invocation(fn.name, "spaced", {}, lambda _: None))
    return time.perf_counter_ns() - started


def new_versions(rounds: int) -> list[dict[str, Any]]:
    rows = []
    for lang in ("python", "js"):
        project = EXAMPLES / lang / "hello"
        wasm = build_function(project).read_bytes()
        config = load_function_config(project)
        runs: dict[bool, list[NewVersion]] = {True: [], False: []}
        for _ in range(rounds):
            for tier_up in (True, False):  # alternating: load on the machine hits both alike
                runs[tier_up].append(first_answer(wasm, config, tier_up))
        for tier_up in (False, True):
            firsts = [r.first_s for r in runs[tier_up]]
            during = [ns for r in runs[tier_up] for ns in r.during_ns]
            after = summary_us([ns for r in runs[tier_up] for ns in r.after_ns])
            done = runs[tier_up]
            rows.append(
                {
                    "function": f"{lang} hello",
                    "tier_up": "on" if tier_up else "off",
                    "first_answer_s_p50": round(statistics.median(firsts), 2),
                    "first_answer_s_max": round(max(firsts), 2),
                    "on_cranelift_s_p50": round(
                        statistics.median(r.cranelift_s for r in runs[tier_up]), 2
                    ),
                    # Requests served on Winch code while Cranelift compiles (shares the cores).
                    "meanwhile_p50_us": summary_us(during)["p50_us"] if during else "-",
                    "meanwhile_p99_us": summary_us(during)["p99_us"] if during else "-",
                    "after_p50_us": after["p50_us"],
                    "after_p99_us": after["p99_us"],
                    # Given back when the baseline engine closes after the switch.
                    "baseline_freed_rss_mib": median_or_dash(r.freed_rss_mib for r in done),
                    "baseline_freed_vm_gib": median_or_dash(r.freed_vm_gib for r in done),
                    "rounds": rounds,
                }
            )
    return rows


def median_or_dash(values: Iterable[float | None]) -> float | str:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 1) if known else "-"


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
