"""`edge dev`: build, serve on the production node code, rebuild on save.

When a rebuild fails the last good build keeps serving and the compiler error is printed; when
there has never been a good build, requests get a 500 that carries the compiler error.

Components are compiled with Winch by default here, wasmtime's baseline compiler: a save of a
Python or JavaScript function is served ~3 s sooner (compile 0.7 s instead of 3.5-4.2 s) and
the code runs slower, which a developer's requests do not notice; everything else is the
production node's. `--compiler cranelift` compiles as nodes do.

Config values from `--var` and the project's `.dev.vars` (edge.dev_vars) lie over edge.toml's
[config] as deploy-time values do on a node (`Served.values`). A save of `.dev.vars` alone is
served without a rebuild; a bad one is reported and the values before it stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

import anyio
from watchfiles import Change, DefaultFilter, awatch

from edge.build import build
from edge.cli_output import Output
from edge.config.function import load_function_config
from edge.dev_http import AccessLog, ErrorDetail, RecentLines
from edge.dev_vars import DEV_VARS_FILE, load_dev_values
from edge.errors import BuildFailed, ConfigError, EdgeError
from edge.node.app import create_app
from edge.node.client_ip import parse_networks
from edge.node.config import FunctionSource, NodeConfig
from edge.node.logs import LogWriter
from edge.node.routing import Route
from edge.node.runtime import Loaded, NodeRuntime, Served, Unavailable
from edge.node.server import run
from edge.sandbox.engine import EngineSettings
from edge.traffic.geodb import default_database

DEV_COMPILER = "winch"
# Every client of `edge dev` is on this machine: its x-forwarded-for is believed, so that
# `curl -H 'x-forwarded-for: 81.2.69.142'` shows a function what a London client would get.
DEV_TRUSTED_PROXIES = parse_networks(["127.0.0.0/8", "::1/128"])
# Compiled code kept in the project's build/compiled: each save of a Python function adds
# ~40 MB there, which without a bound filled the disk over a day of editing. The newest few
# stay, so undoing a save maps its code again instead of compiling it.
DEV_KEEP_COMPILED = 4


class _SourceFilter(DefaultFilter):
    """Source changes only: our own build output must not trigger another build."""

    def __call__(self, change: Change, path: str) -> bool:
        parts = Path(path).parts
        skip = "build" in parts or "node_modules" in parts
        return not skip and super().__call__(change, path)


def _sorted_changes(changes: set[tuple[Change, str]]) -> tuple[bool, bool]:
    """Whether a batch of changes touches the config values, and whether it touches anything
    else (sources: a rebuild). Editors that save by writing a temporary file and renaming it
    over the original (`.dev.vars.tmp` -> `.dev.vars`), or that probe the directory with a file
    they delete at once (vim's `4913`), leave files in the batch that are gone: those say
    nothing about the build; and no file named `.dev.vars...` is a source."""
    gone_again = {p for c, p in changes if c == Change.added and not os.path.lexists(p)}
    paths = {p for _c, p in changes} - gone_again
    values = {p for p in paths if Path(p).name.startswith(DEV_VARS_FILE)}
    return bool(values), bool(paths - values)


class DevServer:
    def __init__(
        self,
        project: Path,
        host: str,
        port: int,
        out: Output | None = None,
        compiler: str = DEV_COMPILER,
        var_options: Mapping[str, str] | None = None,
    ) -> None:
        self.out = out or Output()
        self.compiler = compiler
        self.project = project.resolve()
        self.config = load_function_config(self.project)
        self.values = load_dev_values(self.project, var_options or {})
        node_config = NodeConfig(
            node_id="dev",
            region="local",
            listen=f"{host}:{port}",
            cache_dir=self.project / "build" / "compiled",
            geoip_db=default_database(),  # GeoLite2-City from PyPI, as `edge dns` uses
            trusted_proxies=DEV_TRUSTED_PROXIES,
            workers=8,
            sandbox=EngineSettings(compiler=compiler, workers=8),
        )
        self.recent = RecentLines(LogWriter("pretty"))
        self.runtime = NodeRuntime(node_config, self.recent)
        self.runtime.deploy([Route("*", "/", self.config.name)], {})
        self.app = AccessLog(ErrorDetail(create_app(self.runtime), self.recent), self.out)
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"  # IPv6 in brackets
        self.has_good_build = False

    async def rebuild(self) -> bool:
        name = self.config.name
        try:
            self.config = load_function_config(self.project)
            built = await anyio.to_thread.run_sync(build, self.project)
            loaded = await anyio.to_thread.run_sync(
                self.runtime.load, FunctionSource(self.config, built.path)
            )
        except EdgeError as e:
            loaded = Unavailable(e)
        if isinstance(loaded, Unavailable):
            error = loaded.error
            detail = error.output if isinstance(error, BuildFailed) else ""
            kept = "\nedge dev: still serving the last good build" if self.has_good_build else ""
            self.out.event(
                "build_failed",
                f"edge dev: build failed: {error.message}"
                + (f"\n{detail.rstrip()}" if detail else "") + kept,
                type=error.reason, message=error.message, output=detail,
                serving_last_good=self.has_good_build,
            )
            if not self.has_good_build:
                self.runtime.replace_function(name, loaded)
            return False
        self._serve(loaded)
        in_use = self.runtime.cache.path_for(loaded.digest, loaded.code_engine)
        if in_use is not None:
            prune_compiled(in_use, DEV_KEEP_COMPILED)
        self.has_good_build = True
        self.out.event("built", f"edge dev: built {self.config.name} ({self.config.lang})",
                       **built.to_json())
        return True

    def _serve(self, loaded: Loaded) -> None:
        # The route names the function; a renamed function gets the route.
        served = Served(loaded, values=self.values.merged)
        self.runtime.deploy([Route("*", "/", self.config.name)], {self.config.name: served})

    def reload_values(self) -> bool:
        """Reads .dev.vars again and serves its values with the build being served."""
        try:
            values = load_dev_values(self.project, self.values.from_options)
        except ConfigError as e:
            self.out.event(
                "vars_failed",
                f"edge dev: {e.message}\nedge dev: still serving the config values before it",
                type=e.reason, message=e.message,
            )  # fmt: skip
            return False
        self.values = values
        served = self.runtime.deployment.functions.get(self.config.name)
        if served is not None:
            self._serve(served.stable)
        self._announce_values(f"{DEV_VARS_FILE} read again; ")
        return True

    def _announce_values(self, why: str) -> None:
        self.out.event(
            "vars",
            f"edge dev: {why}config values over edge.toml: {self.values.describe()}",
            file=sorted(self.values.from_file), var=sorted(self.values.from_options),
        )  # fmt: skip

    async def watch(self) -> None:
        async for changes in awatch(self.project, watch_filter=_SourceFilter(), debounce=200):
            values, sources = _sorted_changes(changes)
            if values:  # no rebuild
                self.reload_values()
            if sources:
                self.out.event("change", "edge dev: change detected, rebuilding")
                await self.rebuild()

    async def serve(self) -> None:
        self.runtime.engine.start_workers()
        for note in self.runtime.engine.notes:  # as `edge node` says them
            self.out.note(f"edge dev: {note}")
        if self.values.merged:
            self._announce_values("")
        await self.rebuild()

        async def announce() -> None:
            self.out.event(
                "ready",
                f"edge dev: serving {self.config.name} at {self.url} "
                f"(compiled with {self.compiler}; Ctrl-C to stop)",
                url=self.url, function=self.config.name, compiler=self.compiler,
            )

        watcher = asyncio.create_task(self.watch())
        # Let it run to its first wait: awatch registers its watches before that, so a save
        # made right after the ready line is seen (on a busy machine it came first, and was lost).
        await asyncio.sleep(0)
        try:
            await run(self.app, self.runtime.config.listen, on_ready=announce)
        finally:
            watcher.cancel()
            self.runtime.close()


def prune_compiled(in_use: Path, keep: int) -> None:
    """Deletes all but the `keep` newest compiled artifacts beside `in_use`, which stays (a
    mapped file that is deleted lives on until it is unmapped, so this is safe anyway)."""
    with contextlib.suppress(OSError):
        os.utime(in_use)  # the newest now, also when it was an older save's (a cache hit)
    found = []
    for path in in_use.parent.glob("*.cwasm"):
        with contextlib.suppress(OSError):
            found.append((path.stat().st_mtime, path))
    for _mtime, path in sorted(found, reverse=True)[keep:]:
        if path != in_use:
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".lock").unlink(missing_ok=True)


def serve_dev(
    project: Path,
    host: str,
    port: int,
    out: Output | None = None,
    compiler: str = DEV_COMPILER,
    var_options: Mapping[str, str] | None = None,
) -> None:
    asyncio.run(DevServer(project, host, port, out, compiler, var_options).serve())
