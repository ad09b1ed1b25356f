"""C: zig cc to a wasm32-wasi reactor module, then wasm-tools embeds the WIT and wraps it.

The SDK header (sdk/c/edge_function.h) implements the canonical ABI by hand, so no bindings
generator is needed. The core module must not import WASI: there is no preview1 adapter in the
pipeline and the host provides only the edge:function interfaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edge.build.cache import project_files
from edge.build.language import Language, Work
from edge.build.toolchain import SDK_DIR, WIT_DIR, WORLD, Toolchain
from edge.config.function import FunctionConfig
from edge.errors import BuildFailed

C_SDK = SDK_DIR / "c"
CFLAGS = ["--target=wasm32-wasi", "-mexec-model=reactor", "-O2", "-g0", "-s"]

WASI_HINT = (
    "\nhint: C functions run without WASI (no files, stdout, clocks or random); use edge_log "
    "for output. The host provides only the edge:function imports."
)


def sdk_inputs() -> Sequence[tuple[str, Path]]:
    return [("sdk-c", C_SDK)]


def toolchain_version(tools: Toolchain) -> str:
    tools.zig_cc()  # raises ToolchainMissing with the install hint when ziglang is absent
    zig = tools.version([tools.python, "-m", "ziglang", "version"])
    wasm_tools = tools.version([*tools.wasm_tools(), "--version"])
    return f"zig {zig}; {wasm_tools}; cflags {' '.join(CFLAGS)}"


def build_component(project_dir: Path, cfg: FunctionConfig, tools: Toolchain, work: Work) -> Path:
    # Every .c file of the project is a translation unit; the entry file must be one of them.
    sources = [p for p in project_files(project_dir) if p.suffix == ".c"]
    rel = [str(p.relative_to(project_dir)) for p in sources]
    core, embedded, out = work.dir / "core.wasm", work.dir / "embedded.wasm", work.dir / "out.wasm"
    # Compiled from the project dir so that diagnostics name files as the user sees them.
    tools.run(
        [*tools.zig_cc(), *CFLAGS, "-I", str(C_SDK), "-I", ".", *rel, "-o", str(core)],
        cwd=project_dir,
        tmp=work.tmp,
        what=f"zig cc ({cfg.name})",
    )
    wasm_tools = tools.wasm_tools()
    tools.run(
        [
            *wasm_tools,
            "component",
            "embed",
            str(WIT_DIR),
            "--world",
            WORLD,
            str(core),
            "-o",
            str(embedded),
        ],
        cwd=work.dir,
        tmp=work.tmp,
        what="wasm-tools component embed",
    )
    try:
        tools.run(
            [*wasm_tools, "component", "new", str(embedded), "-o", str(out)],
            cwd=work.dir,
            tmp=work.tmp,
            what="wasm-tools component new",
        )
    except BuildFailed as exc:
        if "wasi_snapshot_preview1" in exc.output:
            raise BuildFailed(exc.message + WASI_HINT, exc.output) from exc
        raise
    return out


LANGUAGE = Language(
    sdk_inputs=sdk_inputs, toolchain_version=toolchain_version, compile=build_component
)
