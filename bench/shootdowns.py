"""Why requests on Winch code were slow while their Cranelift code compiled: TLB shootdowns.

The JS hello's requests, 10 ms apart, on Winch code (the tier-up's first tier), with nothing
else running, beside a Cranelift compile on another thread of this process (as the tier-up
worker runs it), beside the same compile in another process, and beside a thread that only
hashes (busy in C, no GIL, no memory mapped or unmapped); each on the default pool and on a
pool whose slots stay resident (what the baseline engine uses now). Per condition: latency,
the request thread's CPU time and minor page faults, and the TLB shootdowns (all cores, from
/proc/interrupts) per request. Conditions alternate round by round.

    .venv/bin/python -m bench.shootdowns [--requests N] [--rounds N] [--lang js]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import component

from edge.build import build_function
from edge.config.function import load_function_config
from edge.sandbox import growcheck, host
from edge.sandbox.compile_cache import CompileCache
from edge.sandbox.engine import MIB, EngineSettings, SandboxEngine
from edge.sandbox.function import LoadedFunction

from .common import percentile, print_table, write_results
from .sandbox import EXAMPLES, REQUEST

GAP_S = 0.01
Beside = Callable[[], AbstractContextManager[None]]


def compile_engine() -> wasmtime.Engine:
    # As SandboxEngine.background_compiler: Cranelift on one thread, no pool.
    config = wasmtime.Config()
    config.parallel_compilation = False
    config.wasm_component_model = True
    return wasmtime.Engine(config)


@contextlib.contextmanager
def busy_thread(work: Callable[[], None]) -> Iterator[None]:
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            work()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(0.3)
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def compile_process(wasm_path: Path) -> Iterator[None]:
    code = (
        "import sys, wasmtime; from wasmtime import component as c\n"
        "cfg = wasmtime.Config(); cfg.parallel_compilation = False\n"
        "cfg.wasm_component_model = True; e = wasmtime.Engine(cfg)\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "while True: c.Component(e, data)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(wasm_path)])
    time.sleep(0.5)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def interrupts(name: str) -> int:
    for line in Path("/proc/interrupts").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == f"{name}:":
            return sum(int(f) for f in fields[1:] if f.isdigit())
    return 0


def spaced(fn: LoadedFunction, requests: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"wall": [], "cpu": [], "faults": []}
    shootdowns = interrupts("TLB")
    for _ in range(requests):
        time.sleep(GAP_S)
        faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
        fn.invoke(REQUEST, host.Invocation(fn.name, "shootdowns", {}, lambda _: None))
        out["wall"].append((time.perf_counter_ns() - wall) / 1000)
        out["cpu"].append((time.thread_time_ns() - cpu) / 1000)
        out["faults"].append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults)
    out["tlb"] = [(interrupts("TLB") - shootdowns) / requests]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lang", default="js")
    args = parser.parse_args()
    project = EXAMPLES / args.lang / "hello"
    wasm = build_function(project).read_bytes()
    config = load_function_config(project)
    checked = growcheck.instrument(wasm).wasm  # what the tier-up compiles
    wasm_path = Path(tempfile.mkdtemp(prefix="edge-bench-")) / "checked.wasm"
    wasm_path.write_bytes(checked)
    engine = compile_engine()

    def compiling() -> None:
        component.Component(engine, checked)

    big = bytes(8 * MIB)

    def hashing() -> None:
        hashlib.sha256(big)  # releases the GIL for the whole buffer

    besides: dict[str, Beside] = {
        "nothing": contextlib.nullcontext,
        "compile thread": lambda: busy_thread(compiling),
        "compile process": lambda: compile_process(wasm_path),
        "hashing thread": lambda: busy_thread(hashing),
    }
    engines = []

    def load(compiler: str, resident_above_bytes: int) -> LoadedFunction:
        settings = EngineSettings(
            compiler=compiler, tier_up=False, resident_above_bytes=resident_above_bytes
        )
        sandbox = SandboxEngine(settings)
        engines.append(sandbox)
        cache = CompileCache(sandbox, None)
        fn = LoadedFunction(sandbox, cache, wasm, config, lambda _: None)
        for _ in range(50):  # warm the pool's slots
            fn.invoke(REQUEST, host.Invocation(fn.name, "warm", {}, lambda _: None))
        return fn

    default_pool = load("winch", 1024 * MIB)
    resident_pool = load("winch", 1 * MIB)
    cranelift = load("cranelift", 1024 * MIB)
    conditions: list[tuple[str, str, str, LoadedFunction]] = [
        ("winch", "default", beside, default_pool) for beside in besides
    ]
    conditions += [("winch", "resident", b, resident_pool) for b in ("nothing", "compile thread")]
    conditions.append(("cranelift", "default", "nothing", cranelift))
    samples: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for _ in range(args.rounds):
        for compiler, pool, beside, fn in conditions:
            with besides[beside]():
                got = spaced(fn, args.requests)
            into = samples.setdefault((compiler, pool, beside), {})
            for key, values in got.items():
                into.setdefault(key, []).extend(values)
    for sandbox in engines:
        sandbox.close()
    rows: list[dict[str, Any]] = []
    for (compiler, pool, beside), got in samples.items():
        rows.append(
            {
                "function": f"{args.lang} hello",
                "code": compiler,
                "pool": pool,
                "beside": beside,
                "p50_us": round(statistics.median(got["wall"])),
                "p99_us": round(percentile(got["wall"], 99)),
                "cpu_p50_us": round(statistics.median(got["cpu"])),
                "faults_p50": round(statistics.median(got["faults"])),
                "tlb_shootdowns_per_req": round(statistics.median(got["tlb"]), 1),
                "n": len(got["wall"]),
            }
        )
    path = write_results("shootdowns", rows, {"gap_s": GAP_S, "rounds": args.rounds})
    print_table("Requests 10 ms apart beside other work: TLB shootdowns", rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
