"""A JavaScript function's randomness and clock, per request, on a real node.

componentize-js snapshots the engine at build time: without its random and clock features,
crypto.randomUUID(), crypto.getRandomValues() and Math.random() gave the same values on every
request, and Date.now() was the build time.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from edge.build import build, js
from edge.config.function import load_function_config
from edge.sandbox import function, host
from edge.sandbox.compile_cache import CompileCache
from edge.sandbox.engine import EngineSettings, SandboxEngine
from edge.sandbox.function import LoadedFunction

from .conftest import FIXTURES, Proc, fixture_routes

pytestmark = pytest.mark.toolchain


def test_randomness_is_fresh_and_the_clock_is_the_requests(
    start_node: Callable[..., Proc], built: Callable[[Path], Path], tmp_path: Path
) -> None:
    granted = tmp_path / "entropy-clock-js"
    shutil.copytree(
        FIXTURES / "functions" / "entropy-js", granted, ignore=shutil.ignore_patterns("build")
    )
    toml = (granted / "edge.toml").read_text().replace('"entropy-js"', '"entropy-clock-js"')
    (granted / "edge.toml").write_text(toml + "\n[capabilities]\nwall_clock = true\n")
    built(granted)
    body = fixture_routes(["entropy-js"], built) + (
        f'[[function]]\nproject = "{granted}"\n'
        '[[route]]\nroute = "*/entropy-clock-js"\nfunction = "entropy-clock-js"\n'
    )
    node = start_node(body)

    before_ms = time.time() * 1000
    first, second = (httpx.get(node.url + "/entropy-js", timeout=30).json() for _ in range(2))
    after_ms = time.time() * 1000
    for key in ("math", "uuid", "bytes"):
        assert first[key] != second[key], key
    for doc in (first, second):
        # The request's start, to the millisecond, frozen: no `wall_clock` grant.
        assert before_ms - 1 <= doc["now"] <= after_ms, (before_ms, doc["now"], after_ms)
        assert doc["date"] == doc["now"] and doc["elapsed"] == 0
        assert doc["perf"] == 0 and doc["origin"] == doc["now"]

    frozen = httpx.get(node.url + "/entropy-js?looks=200", timeout=30).json()
    assert frozen["elapsed"] == 0 and frozen["perf"] == 0  # no time passed in 200 looks
    moving = httpx.get(node.url + "/entropy-clock-js?looks=100000000", timeout=30).json()
    assert moving["elapsed"] >= 5 and moving["perf"] >= 5  # granted: the real clock
    assert 0 <= moving["now"] - moving["origin"] <= 1000  # the request's start, a moment before


def test_a_js_build_from_before_warns_when_it_is_loaded(
    built: Callable[[Path], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A component deployed before stays as it was built: its operator is told to rebuild."""
    project = FIXTURES / "functions" / "entropy-js"
    current = built(project).read_bytes()
    old_project = tmp_path / "entropy-js"
    shutil.copytree(project, old_project, ignore=shutil.ignore_patterns("build"))
    monkeypatch.setattr(js, "DISABLED_FEATURES", [*js.DISABLED_FEATURES, "random", "clocks"])
    old = build(old_project, cache_dir=tmp_path / "builds").path.read_bytes()
    cfg = load_function_config(project)
    with SandboxEngine(EngineSettings(tier_up=False)) as engine:
        cache = CompileCache(engine, tmp_path / "compiled")
        for wasm, expected in ((old, [function.STALE_JS_BUILD]), (current, [])):
            said: list[host.LogLine] = []
            LoadedFunction(engine, cache, wasm, cfg, said.append)
            assert [line.message for line in said if line.level == "warn"] == expected
