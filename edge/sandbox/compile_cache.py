"""Compiled components on disk, so that a node restart does not recompile.

Key: sha256 of the component's bytes + the engine fingerprint (wasmtime version, settings that
change generated code, and the growcheck version: what is compiled is the component with its
`memory.grow`s checked, see growcheck). A corrupt or stale cache file is recompiled and
replaced, never trusted: wasmtime checks the header and refuses artifacts from another version
or config.

Several nodes on one host may share the directory: a compile holds an exclusive lock on
`<file>.lock`, so when all of them get the same new version at once one compiles and the others
wait and map its result (compiling is ~10x the cost of loading; fifty compiles of one component
would each take a core).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import wasmtime
from wasmtime import component

from edge.errors import ComponentRejected, ConfigError
from edge.filelock import exclusive
from edge.sandbox import growcheck, waitclamp
from edge.sandbox.engine import SandboxEngine

Warn = Callable[[str], None]
# glibc keeps what a compile freed in its allocator arenas: after compiling the Python hello a
# process held 326 MiB resident, 74 MiB once trimmed (a tier-up without it: 660 MiB).
# malloc_trim hands it back (~25 ms, GIL released); small compiles free little, so they skip it.
# Other C libraries do not have it.
_malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
TRIM_AFTER_BYTES = 1024 * 1024


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    unstored: int = 0  # compiled code the directory could not take (full disk, gone)


def content_hash(wasm: bytes) -> str:
    return hashlib.sha256(wasm).hexdigest()


class CompileCache:
    def __init__(self, engine: SandboxEngine, directory: Path | None) -> None:
        self.engine = engine
        self.directory = directory
        self.stats = CacheStats()
        self._last_rewrite: tuple[bytes, bytes, list[str]] | None = None
        if directory is not None:
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as e:  # at start: the configuration names a place that cannot be
                raise ConfigError(f"compile cache directory {directory}: {e.strerror}") from None

    def path_for(self, digest: str, engine: wasmtime.Engine | None = None) -> Path | None:
        """Where the artifact for `engine` (default: the sandbox's first) is kept."""
        if self.directory is None:
            return None
        tag = self.engine.artifact_tag(engine) if engine is not None else ""
        return self.directory / f"{digest}-{self.engine.settings.fingerprint()}{tag}.cwasm"

    def load(
        self,
        wasm: bytes,
        digest: str | None = None,
        engine: wasmtime.Engine | None = None,
        warn: Warn | None = None,
        compile_in: wasmtime.Engine | None = None,
        *,
        say_unchecked: bool = True,
    ) -> component.Component:
        """Returns the compiled component, from disk when possible. Raises ComponentRejected.
        `engine`: which of the sandbox's engines (see SandboxEngine.engine_for); one artifact
        suits both. `warn` hears about core modules a compile had to leave unchecked (unless
        not `say_unchecked`: a tier-up repeats what the first compile said) and about an
        artifact the directory could not take. `compile_in`: an engine with the same code
        settings to compile a new artifact in (see SandboxEngine.background_compiler)."""
        try:
            return self._load(wasm, digest, engine, warn, compile_in, say_unchecked)
        finally:
            # A rewrite kept for these bytes is not needed again (a tier-up loads through here).
            last = self._last_rewrite
            if last is not None and last[0] is wasm:
                self._last_rewrite = None

    def _load(
        self,
        wasm: bytes,
        digest: str | None,
        engine: wasmtime.Engine | None,
        warn: Warn | None,
        compile_in: wasmtime.Engine | None,
        say_unchecked: bool,
    ) -> component.Component:
        digest = digest or content_hash(wasm)
        engine = engine or self.engine.engine
        path = self.path_for(digest, engine)
        unchecked = warn if say_unchecked else None
        if path is None:
            self.stats.misses += 1
            compiled = self.compile(wasm, compile_in or engine, unchecked)
            return self._into(engine, compiled, compile_in)
        compiled = self.cached(digest, engine)
        if compiled is not None:
            return compiled
        try:
            # Only the compile holds the lock, not the mapping: fifty nodes mapping one after
            # the other would each wait for the one before to be scheduled.
            with exclusive(path.with_name(path.name + ".lock")):
                here = not path.exists()  # else another node sharing the directory compiled it
                if here:
                    compiled = self.compile(wasm, compile_in or engine, unchecked)
                    _write_atomically(path, bytes(compiled.serialize()))
        except OSError as e:
            # A full disk or a directory gone must not stop a deploy or a tier-up: the code
            # serves from memory (without the copy-on-write image), compiled again at restart.
            self.stats.misses += 1
            self.stats.unstored += 1
            if warn is not None:
                warn(
                    f"compile cache {self.directory} cannot keep compiled code ({e}); serving"
                    " it from memory, a restart compiles it again"
                )
            if compiled is None:
                compiled = self.compile(wasm, compile_in or engine, unchecked)
            return self._into(engine, compiled, compile_in)
        self.stats.misses += here
        self.stats.hits += not here
        # Mapped from the file, so this node also gets the copy-on-write image; a file wasmtime
        # refuses (and deletes) is compiled in memory instead.
        compiled = self._mapped(path, engine)
        if compiled is None:
            return self.compile(wasm, engine, warn)
        return compiled

    @staticmethod
    def _into(
        engine: wasmtime.Engine, compiled: component.Component, compiled_in: wasmtime.Engine | None
    ) -> component.Component:
        """`compiled` usable in `engine`: code compiled in another engine (with the same code
        settings, see SandboxEngine.background_compiler) goes through its bytes."""
        if compiled_in is None or compiled_in is engine:
            return compiled
        return component.Component.deserialize(engine, compiled.serialize())

    def cached(self, digest: str, engine: wasmtime.Engine) -> component.Component | None:
        """The component mapped from disk if it was compiled before (a hit), else None."""
        path = self.path_for(digest, engine)
        compiled = None if path is None else self._mapped(path, engine)
        self.stats.hits += compiled is not None
        return compiled

    def _mapped(self, path: Path, engine: wasmtime.Engine) -> component.Component | None:
        if not path.exists():
            return None
        try:
            # deserialize_file maps the file, so memory images can be copy-on-write.
            compiled = component.Component.deserialize_file(engine, str(path))
        except wasmtime.WasmtimeError:
            path.unlink(missing_ok=True)
            return None
        return compiled

    def _rewritten(self, wasm: bytes) -> tuple[bytes, list[str]]:
        """`wasm` with its clock waits clamped and its memory.grow checked, and what could not
        be done. The last one is kept for the same bytes' next compile (a tier-up), once: the
        rewrites of a JavaScript component take ~0.3 s of the GIL the first time. Raises
        ComponentRejected."""
        last, self._last_rewrite = self._last_rewrite, None
        if last is not None and last[0] is wasm:
            return last[1], last[2]
        try:
            clamped = waitclamp.clamp(wasm)
        except waitclamp.ClockAddressTaken as e:
            raise ComponentRejected(str(e)) from None
        checked = growcheck.instrument(clamped.wasm)
        problems = [f"memory.grow left unchecked in {reason}; {GROW_RISK}"
                    for reason in checked.skipped]  # fmt: skip
        problems += [f"clock waits left as they are in {reason}; {WAIT_RISK}"
                     for reason in clamped.skipped]  # fmt: skip
        if len(wasm) >= self.engine.settings.tier_up_above_bytes:
            self._last_rewrite = (wasm, checked.wasm, problems)
        return checked.wasm, problems

    def compile(
        self, wasm: bytes, engine: wasmtime.Engine, warn: Warn | None = None
    ) -> component.Component:
        """Compiles in memory, nothing stored (for `engine`'s compiler, whatever the cache
        files are for: the baseline tier's code is not kept). Raises ComponentRejected."""
        rewritten, problems = self._rewritten(wasm)
        if rewritten is wasm:  # nothing rewritten
            compiled = _component(engine, wasm)
        else:
            try:
                compiled = component.Component(engine, rewritten)
            except wasmtime.WasmtimeError as e:
                # A rewrite the engine refuses is our bug; the function still gets to run.
                compiled = _component(engine, wasm)
                failed = f"everywhere: the rewritten component failed ({_first_line(e)})"
                problems = [f"memory.grow left unchecked {failed}; {GROW_RISK}",
                            f"clock waits left as they are {failed}; {WAIT_RISK}"]  # fmt: skip
        if warn is not None:  # said only of a component that compiled
            for problem in problems:
                warn(problem)
        if _malloc_trim is not None and len(wasm) >= TRIM_AFTER_BYTES:
            _malloc_trim(0)
        return compiled


GROW_RISK = "a memory-limit hit there is a trap"
WAIT_RISK = "a wait there holds its thread past the deadline"


def _component(engine: wasmtime.Engine, wasm: bytes) -> component.Component:
    try:
        return component.Component(engine, wasm)
    except wasmtime.WasmtimeError as e:
        raise ComponentRejected(f"not a valid WebAssembly component: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0]


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
