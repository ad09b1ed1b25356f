"""Compile time and fresh-request cost per compiler: Cranelift (nodes) and Winch (`edge dev`).

For the C, Python and JavaScript hello: the time to compile the component from its bytes (no
cache), then the sandbox cost of a fresh request (instance + call + marshalling) with the
compiled code, measured side by side in one run.

    .venv/bin/python -m bench.compile [--iterations N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from edge.build import build_function
from edge.config.function import load_function_config
from edge.sandbox.compile_cache import CompileCache
from edge.sandbox.engine import COMPILERS, EngineSettings, SandboxEngine
from edge.sandbox.function import LoadedFunction

from .common import print_table, summary_us, write_results
from .sandbox import EXAMPLES, measure


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=600)
    args = parser.parse_args()
    rows = []
    for lang in ("c", "python", "js"):
        project = EXAMPLES / lang / "hello"
        wasm = build_function(project).read_bytes()
        config = load_function_config(project)
        for compiler in sorted(COMPILERS):
            # Instances are not made ahead here: the request pays for its own, as in dev.
            settings = EngineSettings(compiler=compiler, prepare_instances=False)
            with SandboxEngine(settings) as engine:
                cache = CompileCache(engine, Path(tempfile.mkdtemp(prefix="edge-bench-")))
                started = time.perf_counter()
                fn = LoadedFunction(engine, cache, wasm, config, lambda _: None)
                compile_s = time.perf_counter() - started
                samples, cpu_us = measure(fn, args.iterations)
            rows.append(
                {
                    "function": f"{lang} hello",
                    "compiler": compiler,
                    "compile_s": round(compile_s, 2),
                    **summary_us(samples),
                    "cpu_us_per_req": cpu_us,
                }
            )
    path = write_results("compile", rows, {})
    print_table("Compile time and fresh request cost by compiler", rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
