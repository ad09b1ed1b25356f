"""edge.build: the content-hash cache, error reporting, toolchain lookup and scaffolding."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from edge.build import BuildResult, Toolchain, build, build_function, stats
from edge.build.cache import (
    DEFAULT_MAX_MIB,
    STALE_LOCK_S,
    building,
    cache_key,
    lookup,
    max_cache_bytes,
    remove_stale_locks,
    store,
)
from edge.build.scaffold import new_project
from edge.errors import BuildFailed, ConfigError, ToolchainMissing, UsageError

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "sdk" / "examples"
HANDLER_EXPORT = "export edge:function/handler@0.1.0;"


def copy_example(lang: str, name: str, dest: Path) -> Path:
    project = dest / f"{lang}-{name}"
    shutil.copytree(EXAMPLES / lang / name, project, ignore=shutil.ignore_patterns("build"))
    return project


def component_wit(component: Path) -> str:
    wasm_tools = Toolchain().wasm_tools()
    return subprocess.run(
        [*wasm_tools, "component", "wit", str(component)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def absent_toolchain(tmp_path: Path) -> Toolchain:
    """A toolchain lookup that finds nothing anywhere."""
    return Toolchain(
        bin_dirs=(tmp_path,),
        which=lambda name: None,
        has_module=lambda name: False,
        js_bin_dir=tmp_path,
    )


# --- No toolchain needed ------------------------------------------------------------------------


def test_cache_key_covers_sources_but_not_build_output(tmp_path: Path) -> None:
    project = tmp_path / "p"
    (project / "build").mkdir(parents=True)
    (project / "main.c").write_text("int x;\n")
    sdk = tmp_path / "sdk"
    sdk.mkdir()
    (sdk / "h.h").write_text("/* sdk */\n")

    def key(version: str = "zig 1") -> str:
        return cache_key("c", version, [("project", project), ("sdk", sdk)])

    first = key()
    (project / "build" / "p.wasm").write_bytes(b"\0asm")
    assert key() == first, "build output must not change the key"
    assert key("zig 2") != first, "the toolchain version is part of the key"
    (sdk / "h.h").write_text("/* sdk v2 */\n")
    second = key()
    assert second != first, "SDK files are part of the key"
    (project / "main.c").write_text("int y;\n")
    assert key() != second, "source files are part of the key"


def test_cache_evicts_the_least_recently_used_past_its_size(tmp_path: Path) -> None:
    cache, component = tmp_path / "cache", tmp_path / "c.wasm"
    component.write_bytes(b"x" * 1000)
    for n, key in enumerate(["a", "b", "c"]):
        store(cache, key, component, max_bytes=10_000)
        os.utime(cache / f"{key}.wasm", (n, n))  # stored in this order, long ago
    assert lookup(cache, "a") is not None  # a hit is a use: "a" is now the newest
    store(cache, "d", component, max_bytes=2500)  # room for two
    assert sorted(p.stem for p in cache.glob("*.wasm")) == ["a", "d"]
    assert lookup(cache, "b") is None and lookup(cache, "c") is None
    store(cache, "e", component, max_bytes=10)  # the one just stored stays, whatever the cap
    assert [p.stem for p in cache.glob("*.wasm")] == ["e"]


def test_lock_files_go_once_stale_and_without_a_component(tmp_path: Path) -> None:
    cache, component = tmp_path / "cache", tmp_path / "c.wasm"
    component.write_bytes(b"x")
    for key in ("built", "failed", "fresh"):
        with building(cache, key, on_wait=lambda: None):
            if key == "built":
                store(cache, key, component)
    locks = cache / "locks"
    for key in ("built", "failed"):
        os.utime(locks / f"{key}.lock", (0, 0))  # made long ago
    remove_stale_locks(cache, now_s=STALE_LOCK_S + 1)
    # "fresh" may belong to a build still compiling; "built" guards a component that exists.
    assert sorted(p.stem for p in locks.glob("*.lock")) == ["built", "fresh"]


def test_python_key_changes_with_the_packages_installed(tmp_path: Path) -> None:
    from edge.build.python import installed_packages

    site = tmp_path / "site-packages"
    (site / "humanize-4.0.dist-info").mkdir(parents=True)
    (site / "humanize").mkdir()
    paths = [str(site), str(tmp_path / "missing")]
    before = installed_packages(paths)
    assert installed_packages(paths) == before
    (site / "humanize-4.0.dist-info").rename(site / "humanize-4.1.dist-info")
    assert installed_packages(paths) != before


def test_cache_size_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_CACHE_MAX_MIB", "3")
    assert max_cache_bytes() == 3 * 1024 * 1024
    monkeypatch.setenv("EDGE_CACHE_MAX_MIB", "")
    assert max_cache_bytes() == DEFAULT_MAX_MIB * 1024 * 1024
    monkeypatch.setenv("EDGE_CACHE_MAX_MIB", "lots")
    with pytest.raises(ConfigError, match="EDGE_CACHE_MAX_MIB must be a whole number of MiB"):
        max_cache_bytes()


@pytest.mark.parametrize(
    ("lang", "message"),
    [
        ("c", "zig not found: pip install ziglang"),
        ("python", "componentize-py not found: pip install componentize-py"),
        ("js", "componentize-js not found: run scripts/install (npm install in sdk/js)"),
    ],
)
def test_toolchain_missing_names_the_package(tmp_path: Path, lang: str, message: str) -> None:
    project = copy_example(lang, "hello", tmp_path)
    with pytest.raises(ToolchainMissing) as info:
        build_function(project, cache_dir=tmp_path / "cache", toolchain=absent_toolchain(tmp_path))
    assert info.value.message == message


def test_missing_source_is_a_config_error(tmp_path: Path) -> None:
    project = copy_example("c", "hello", tmp_path)
    (project / "main.c").unlink()
    with pytest.raises(ConfigError, match=r"main\.c"):
        build_function(project, cache_dir=tmp_path / "cache")


def test_a_directory_that_is_not_a_project_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing is not a directory: a function project is"):
        build_function(tmp_path / "missing", cache_dir=tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"empty has no edge\.toml: .*`edge new NAME`"):
        build_function(tmp_path / "empty", cache_dir=tmp_path / "cache")


def test_scaffold_refuses_non_empty_dir_and_bad_names(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty directory"):
        new_project(tmp_path / "taken", "fn", "c")
    with pytest.raises(UsageError, match="function name"):
        new_project(tmp_path / "x", "Bad_Name", "c")
    with pytest.raises(UsageError, match="unknown language"):
        new_project(tmp_path / "y", "fn", "rust")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("lang", ["python", "c", "js"])
def test_scaffold_replaces_name(tmp_path: Path, lang: str) -> None:
    files = new_project(tmp_path / "fn", "my-fn", lang)
    names = {p.name for p in files}
    assert {"edge.toml", "README.md"} <= names
    for path in files:
        assert "{{name}}" not in path.read_text()
    assert 'name = "my-fn"' in (tmp_path / "fn" / "edge.toml").read_text()
    # Local secrets for `edge dev` stay out of git, and the README says where they go.
    ignored = (tmp_path / "fn" / ".gitignore").read_text().splitlines()
    assert ".dev.vars" in ignored and "build/" in ignored
    assert "`.dev.vars`" in (tmp_path / "fn" / "README.md").read_text()


# --- Needs toolchains ---------------------------------------------------------------------------


@pytest.mark.toolchain
def test_cache_hit_skips_compiler(tmp_path: Path) -> None:
    project = copy_example("c", "hello", tmp_path)
    cache = tmp_path / "cache"

    compiles = stats.compiles
    out = build_function(project, cache_dir=cache)
    assert stats.compiles == compiles + 1
    first = out.read_bytes()
    assert len(list(cache.glob("*.wasm"))) == 1

    out.unlink()
    hits = stats.cache_hits
    again = build_function(project, cache_dir=cache)
    assert again == out
    assert stats.compiles == compiles + 1, "a cache hit must not run the compiler"
    assert stats.cache_hits == hits + 1
    assert again.read_bytes() == first

    # An edit is a new key: compiled again, and a second cache entry.
    src = project / "main.c"
    src.write_text(src.read_text().replace("Hello from C!", "Hello again!"))
    build_function(project, cache_dir=cache)
    assert stats.compiles == compiles + 2
    assert len(list(cache.glob("*.wasm"))) == 2


@pytest.mark.toolchain
def test_a_second_build_of_the_same_inputs_waits_and_takes_the_firsts_component(
    tmp_path: Path,
) -> None:
    """`edge dev` saving while `edge build` runs, or two test workers: one compile, not two."""
    project = copy_example("c", "hello", tmp_path)
    first = build(project, cache_dir=tmp_path / "first")
    (key,) = [p.stem for p in (tmp_path / "first").glob("*.wasm")]
    cache = tmp_path / "cache"
    steps: list[str] = []
    results: list[BuildResult] = []
    compiles = stats.compiles
    with building(cache, key, on_wait=lambda: None):  # another build holds the inputs' lock
        second = threading.Thread(
            target=lambda: results.append(build(project, cache_dir=cache, on_step=steps.append))
        )
        second.start()
        deadline = time.monotonic() + 30
        while "waiting for another build of the same inputs" not in steps:
            assert time.monotonic() < deadline, steps
            time.sleep(0.01)
        store(cache, key, first.path)  # what the other build leaves when it is done
    second.join(timeout=30)
    (result,) = results
    assert result.cache_hit
    assert stats.compiles == compiles, "the waiting build must not compile"
    assert result.path.read_bytes() == first.path.read_bytes()


@pytest.mark.toolchain
def test_a_cache_folder_that_cannot_hold_locks_still_builds_and_caches(tmp_path: Path) -> None:
    project = copy_example("c", "hello", tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "locks").write_text("a file where the lock folder would go\n")
    first = build(project, cache_dir=cache)
    again = build(project, cache_dir=cache)
    assert not first.cache_hit and again.cache_hit


@pytest.mark.toolchain
def test_build_reports_its_steps_and_whether_the_cache_had_it(tmp_path: Path) -> None:
    project = copy_example("c", "hello", tmp_path)
    steps: list[str] = []
    first = build(project, cache_dir=tmp_path / "cache", on_step=steps.append)
    assert not first.cache_hit and first.function == "hello-c" and first.lang == "c"
    assert first.size_bytes == first.path.stat().st_size > 0
    assert [s.split(" with ")[0] for s in steps] == [
        "hashing inputs", "compiling", "componentizing", "componentizing", "checking exports"
    ]
    steps.clear()
    again = build(project, cache_dir=tmp_path / "cache", on_step=steps.append)
    assert again.cache_hit and again.path == first.path and steps == ["hashing inputs"]


@pytest.mark.toolchain
def test_c_syntax_error_carries_compiler_output(tmp_path: Path) -> None:
    project = copy_example("c", "hello", tmp_path)
    (project / "main.c").write_text(
        '#define EDGE_FUNCTION_IMPLEMENTATION\n#include "edge_function.h"\n'
        "void edge_handle(const edge_request_t *req, edge_response_t *resp) {\n"
        "    resp->status = 200\n"
        "}\n"
    )
    with pytest.raises(BuildFailed) as info:
        build_function(project, cache_dir=tmp_path / "cache")
    assert "zig cc" in info.value.message
    assert "main.c:4" in info.value.output
    assert "error" in info.value.output
    assert not (project / "build" / "hello-c.wasm").exists()


@pytest.mark.toolchain
def test_python_without_handler_fails_the_build(tmp_path: Path) -> None:
    project = copy_example("python", "hello", tmp_path)
    (project / "app.py").write_text("from edge_sdk import Response\n")
    with pytest.raises(BuildFailed) as info:
        build_function(project, cache_dir=tmp_path / "cache")
    assert "defines no request handler" in info.value.output


@pytest.mark.toolchain
def test_js_without_a_handler_shape_fails_the_build_naming_them(tmp_path: Path) -> None:
    project = copy_example("js", "hello", tmp_path)
    # A Worker with its method misspelt, and a `handle` that is not exported.
    (project / "index.js").write_text(
        "function handle(req) {}\nexport const helper = 1;\n"
        "export default { async fetc(request, env, ctx) { return new Response('x'); } };\n"
    )
    with pytest.raises(BuildFailed) as info:
        build_function(project, cache_dir=tmp_path / "cache")
    message = info.value.message
    assert message.startswith("index.js has no request handler: export one of")
    for shape in [
        "`export function handle(req)` (edge)",
        "`export default { fetch(request, env, ctx) }` or "
        "`export default class extends WorkerEntrypoint { fetch(request) }` (Cloudflare Workers)",
        "`export async function handleRequest(request)` or "
        "`export async function handler(req, res)` (Spin)",
        '`addEventListener("fetch", (event) => event.respondWith(...))`',
    ]:
        assert shape in message
    assert "exports none of the accepted shapes" in info.value.output
    assert not (project / "build" / "hello-js.wasm").exists()


@pytest.mark.toolchain
@pytest.mark.parametrize(
    ("module", "name", "shim"),
    [("cloudflare:workers", "DurableObject", "cloudflare-workers.js"),
     ("@fermyon/spin-sdk", "Kv", "spin-sdk.js")],
)  # fmt: skip
def test_js_import_from_a_platform_module_without_a_counterpart_is_named(
    tmp_path: Path, module: str, name: str, shim: str
) -> None:
    project = copy_example("js", "hello", tmp_path)
    (project / "index.js").write_text(
        f'import {{ {name} }} from "{module}";\n'
        f"export const used = {name};\n"
        "export function handle(req) { return 'x'; }\n"
    )
    with pytest.raises(BuildFailed) as info:
        build_function(project, cache_dir=tmp_path / "cache")
    assert "esbuild" in info.value.message
    # esbuild names the import and the module our alias stands for.
    assert 'No matching export in "' in info.value.output
    assert f'{shim}" for import "{name}"' in info.value.output


@pytest.mark.toolchain
@pytest.mark.parametrize("lang", ["python", "c", "js"])
def test_scaffolded_project_builds(tmp_path: Path, lang: str) -> None:
    project = tmp_path / "fn"
    new_project(project, f"new-{lang}", lang)
    # The shared cache (EDGE_CACHE_DIR from conftest): the template only changes with the SDK.
    out = build_function(project)
    assert out == project / "build" / f"new-{lang}.wasm"
    assert HANDLER_EXPORT in component_wit(out)
