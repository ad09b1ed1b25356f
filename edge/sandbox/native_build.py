"""Our C helpers (edge/sandbox/native/*.c) as shared libraries, built with `zig cc` from the
ziglang package and kept in a cache keyed by the source's hash. A cached library is loaded only
whole (see _seal); a damaged one is built again. Building one deletes that helper's libraries
from other sources (earlier versions), which nothing would load again (see _prune).

`./scripts/install` builds them ahead (`python -m edge.sandbox.native_build`), so a node does not
wait for zig at its first start; a node that finds one missing builds it then (~4 s). Callers
treat any failure as "not available" and fall back to Python (see edge.sandbox.ticker).

    python -m edge.sandbox.native_build    # builds every helper; prints where each is
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import re
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from types import ModuleType

from edge.build.toolchain import Toolchain
from edge.errors import BuildFailed, ToolchainMissing

SOURCE_DIR = Path(__file__).resolve().parent / "native"
# Loaded into a glibc CPython process, so linked against the system's glibc (zig's default
# target would link musl in statically, and two libcs' threads in one process do not mix);
# baseline CPU features, so a cache dir shared between machines of one architecture is safe.
CFLAGS = ("-O2", "-shared", "-fPIC", "-pthread", "-fvisibility=hidden", "-mcpu=baseline")
KEY_HEX = 16  # hex digits of the cache key in a library's name
# Helpers that are CPython extension modules (module `edge_NAME`), built against this
# interpreter's headers: the key names its ABI, so another Python builds its own.
EXTENSIONS = ("wire",)


def native_dir() -> Path:
    """`EDGE_NATIVE_DIR`, else ~/.cache/edge/native."""
    env = os.environ.get("EDGE_NATIVE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "edge" / "native"


def _target() -> str:
    if sys.platform != "linux":
        raise ToolchainMissing(f"native helpers are built for Linux only, not {sys.platform}")
    return f"{platform.machine()}-linux-gnu"


def _flags(name: str) -> tuple[str, ...]:
    if name not in EXTENSIONS:
        return CFLAGS
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        raise ToolchainMissing(
            f"Python's C headers are not in {include} (Debian: apt install python3-dev)"
        )
    return (*CFLAGS, f"-I{include}")


def library_path(name: str, cache_dir: Path | None = None) -> Path:
    """Where helper `name`'s library for this source and these flags is (or will be) kept.
    The key leaves out zig's version: another zig makes an equivalent library, and a node
    without zig still finds one built earlier."""
    source = (SOURCE_DIR / f"{name}.c").read_bytes()
    parts = [source, " ".join(_flags(name)).encode(), _target().encode()]
    if name in EXTENSIONS:  # built for this interpreter's ABI only
        parts.append(str(sysconfig.get_config_var("SOABI")).encode())
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:KEY_HEX]
    return (cache_dir or native_dir()) / f"{name}-{key}.so"


def build_library(
    name: str, cache_dir: Path | None = None, tools: Toolchain | None = None
) -> Path:
    """The path of helper `name`'s library, built first if the cache lacks it.

    Raises ToolchainMissing (no zig, not Linux) or BuildFailed (zig's output attached)."""
    path = library_path(name, cache_dir)
    damaged = path.is_file() and not _intact(path)
    if path.is_file() and not damaged:
        return path
    tools = tools or Toolchain()
    try:
        zig = tools.zig_cc()
    except ToolchainMissing as e:
        if damaged:
            raise ToolchainMissing(
                f"{path.name} in the cache is damaged (cut short or changed) and cannot be built "
                f"again: {e.message}"
            ) from None
        raise
    path.parent.mkdir(parents=True, exist_ok=True)
    # Built beside its final name and renamed into place: a process loading it never sees half
    # a file, and two processes building at once both end with a whole one.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as work:
        out = Path(work) / path.name
        tools.run(
            [*zig, "-target", _target(), *_flags(name), "-o", str(out),
             str(SOURCE_DIR / f"{name}.c")],
            cwd=Path(work), tmp=Path(work) / "tmp", what=f"zig cc ({name}.c)",
        )  # fmt: skip
        _seal(out)
        os.replace(out, path)
    _prune(path, name)
    return path


def _prune(kept: Path, name: str) -> None:
    """Deletes helper `name`'s other libraries beside `kept`: built from another source or
    flags, by an earlier version, no process of this one loads them, and each would stay in
    the cache for good. A process that loaded one keeps it (Linux unlinks the name; the mapped
    pages live until they are unmapped), and another version sharing the cache builds its own
    again (~4 s) at its next start. One already gone, or that may not be deleted, stays: a
    cache left untidy is no reason to fail a build."""
    own = re.compile(rf"{re.escape(name)}-[0-9a-f]{{{KEY_HEX}}}\.so")
    with contextlib.suppress(OSError):
        for path in kept.parent.iterdir():
            if path != kept and own.fullmatch(path.name):
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)


# A library ends with the SHA-256 of what precedes it (the dynamic loader maps only the
# segments its headers name, so trailing bytes are inert). One cut short, as a crash or a full
# disk can leave it, would map pages past the file's end, and the loader's first touch of one
# kills the process with SIGBUS: only a library whose digest matches is loaded.
DIGEST_BYTES = 32


def _seal(path: Path) -> None:
    data = path.read_bytes()
    with path.open("ab") as f:
        f.write(hashlib.sha256(data).digest())
        f.flush()
        os.fsync(f.fileno())  # whole on disk before its name is


def _intact(path: Path) -> bool:
    try:
        data = path.read_bytes()
    except OSError:
        return False
    body, digest = data[:-DIGEST_BYTES], data[-DIGEST_BYTES:]
    return len(data) > DIGEST_BYTES and hashlib.sha256(body).digest() == digest


HELPERS = ("ticker", "invoke", *EXTENSIONS)

# Per helper: the library (or module), or why it is not available.
_loaded: dict[str, ctypes.CDLL | ModuleType | str] = {}
_loaded_lock = threading.Lock()


def load_helper(name: str) -> ctypes.CDLL | str:
    """Helper `name`'s library, built if needed, loaded once per process; or why it is not
    available (tried once: a node does not try zig again on every request)."""
    found = _load(name)
    assert not isinstance(found, ModuleType), f"{name} is an extension: load_extension"
    return found


def load_extension(name: str) -> ModuleType | str:
    """Extension helper `name` (one of EXTENSIONS) as the module `edge_NAME`, built if needed,
    loaded once per process; or why it is not available."""
    found = _load(name)
    assert not isinstance(found, ctypes.CDLL), f"{name} is a library: load_helper"
    return found


def _load(name: str) -> ctypes.CDLL | ModuleType | str:
    with _loaded_lock:
        found = _loaded.get(name)
        if found is None:
            try:
                path = build_library(name)
                found = _import(name, path) if name in EXTENSIONS else ctypes.CDLL(str(path))
            except Exception as e:  # whatever it is, the caller's Python path serves instead
                found = f"{type(e).__name__}: {getattr(e, 'message', None) or e}"
            _loaded[name] = found
        return found


def _import(name: str, path: Path) -> ModuleType:
    # Not through sys.path: the file's name carries the cache key, and nothing else may import
    # it by accident. The module's name must be the one its PyInit_ function is named for.
    loader = importlib.machinery.ExtensionFileLoader(f"edge_{name}", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def main() -> None:
    """Builds every helper; one that cannot be built is named with why (on stderr), the others
    are built anyway, and the exit status is 1."""
    failed = False
    for name in HELPERS:
        try:
            print(f"{name}: {build_library(name)}")
        except (ToolchainMissing, BuildFailed) as e:
            print(f"{name}: not built: {e.message}", file=sys.stderr)
            failed = True
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
