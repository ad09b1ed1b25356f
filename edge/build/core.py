"""build_function: edge.toml -> `build/<name>.wasm`, through the content-hash cache."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from edge.build import c, js, python
from edge.build.cache import (
    atomic_copy,
    building,
    cache_key,
    default_cache_dir,
    lookup,
    store,
)
from edge.build.language import Language, Work
from edge.build.toolchain import HANDLER_EXPORT, WIT_DIR, Toolchain
from edge.config.function import FunctionConfig, load_function_config
from edge.errors import BuildFailed, ConfigError

LANGUAGES: dict[str, Language] = {"c": c.LANGUAGE, "python": python.LANGUAGE, "js": js.LANGUAGE}

# What each tool run is doing, by the start of its description, for the progress display.
PHASES = (
    ("zig cc", "compiling"),
    ("esbuild", "bundling"),
    ("componentize-py bindings", "generating bindings"),
    ("componentize-", "componentizing"),
    ("wasm-tools component wit", "checking exports"),
    ("wasm-tools component", "componentizing"),
)


def phase(what: str) -> str:
    """`zig cc (hello)` -> `compiling with zig cc (hello)`."""
    verb = next((verb for prefix, verb in PHASES if what.startswith(prefix)), None)
    return what if verb is None else f"{verb} with {what}"


@dataclass
class BuildStats:
    """Process-wide counters, so tests (and `edge build -v`) can tell a hit from a compile."""

    compiles: int = 0
    cache_hits: int = 0


stats = BuildStats()


def output_path(project_dir: Path, cfg: FunctionConfig) -> Path:
    return project_dir / "build" / f"{cfg.name}.wasm"


@dataclass(frozen=True)
class BuildResult:
    function: str
    lang: str
    path: Path
    size_bytes: int
    seconds: float
    cache_hit: bool

    def to_json(self) -> dict[str, object]:
        return {"function": self.function, "lang": self.lang, "path": str(self.path),
                "size_bytes": self.size_bytes, "seconds": round(self.seconds, 3),
                "cache_hit": self.cache_hit}


def build_function(
    project_dir: Path,
    *,
    cache_dir: Path | None = None,
    toolchain: Toolchain | None = None,
    use_cache: bool = True,
) -> Path:
    """Builds the function in `project_dir` into `project_dir/build/<name>.wasm`.

    Raises ConfigError (bad edge.toml, missing source), ToolchainMissing (naming the package to
    install) or BuildFailed (with the compiler's output).
    """
    return build(project_dir, cache_dir=cache_dir, toolchain=toolchain, use_cache=use_cache).path


def build(
    project_dir: Path,
    *,
    cache_dir: Path | None = None,
    toolchain: Toolchain | None = None,
    use_cache: bool = True,
    on_step: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> BuildResult:
    """`build_function` that also says what it did; `on_step` hears each step as it starts."""
    start = clock()
    step: Callable[[str], None] = on_step or (lambda _what: None)
    project_dir = project_dir.resolve()
    cfg = load_function_config(project_dir)
    if not (project_dir / cfg.source).is_file():
        raise ConfigError(f"{project_dir / 'edge.toml'}: source file {cfg.source!r} not found")
    lang = LANGUAGES[cfg.lang]
    tools = replace(toolchain or Toolchain(), on_step=lambda what: step(phase(what)))
    out = output_path(project_dir, cfg)

    def done(hit: bool) -> BuildResult:
        return BuildResult(cfg.name, cfg.lang, out, out.stat().st_size, clock() - start, hit)

    step("hashing inputs")
    key = cache_key(
        cfg.lang,
        lang.toolchain_version(tools),
        [("project", project_dir), ("wit", WIT_DIR), *lang.sdk_inputs()],
    )
    cdir = cache_dir if cache_dir is not None else default_cache_dir()
    lock = (
        building(cdir, key, lambda: step("waiting for another build of the same inputs"))
        if use_cache
        else contextlib.nullcontext()
    )
    with lock:
        hit = lookup(cdir, key) if use_cache else None
        if hit is not None:
            with contextlib.suppress(FileNotFoundError):  # evicted by another build meanwhile
                atomic_copy(hit, out)
                stats.cache_hits += 1
                return done(True)

        with tempfile.TemporaryDirectory(prefix=f"edge-build-{cfg.name}-") as tmp:
            work = Work(Path(tmp))
            built = lang.compile(project_dir, cfg, tools, work)
            stats.compiles += 1
            check_exports(built, tools, work)
            atomic_copy(built, out)
            if use_cache:
                store(cdir, key, built)
    return done(False)


def component_wit(component: Path, tools: Toolchain, work: Work) -> str:
    """The component's world as WIT text (`wasm-tools component wit`)."""
    return tools.run(
        [*tools.wasm_tools(), "component", "wit", str(component)],
        cwd=work.dir,
        tmp=work.tmp,
        what="wasm-tools component wit",
    )


def check_exports(component: Path, tools: Toolchain, work: Work) -> None:
    # A component without the handler export would only fail when the node loads it; failing
    # the build says so where the author is looking.
    wit = component_wit(component, tools, work)
    if f"export {HANDLER_EXPORT};" not in wit:
        raise BuildFailed(f"the built component does not export {HANDLER_EXPORT}", wit)
