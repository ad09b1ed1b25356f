"""Our C helpers (edge/sandbox/native/*.c) as shared libraries, built with `zig cc` from the
ziglang package and kept in a cache keyed by the source's hash.

`./scripts/install` builds them ahead (`python -m edge.sandbox.native_build`), so a node does not
wait for zig at its first start; a node that finds one missing builds it then (~4 s). Callers
treat any failure as "not available" and fall back to Python (see edge.sandbox.ticker).

    python -m edge.sandbox.native_build    # builds every helper; prints where each is
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import tempfile
from pathlib import Path

from edge.build.toolchain import Toolchain
from edge.errors import ToolchainMissing

SOURCE_DIR = Path(__file__).resolve().parent / "native"
# Loaded into a glibc CPython process, so linked against the system's glibc (zig's default
# target would link musl in statically, and two libcs' threads in one process do not mix);
# baseline CPU features, so a cache dir shared between machines of one architecture is safe.
CFLAGS = ("-O2", "-shared", "-fPIC", "-pthread", "-fvisibility=hidden", "-mcpu=baseline")


def native_dir() -> Path:
    """`EDGE_NATIVE_DIR`, else ~/.cache/edge/native."""
    env = os.environ.get("EDGE_NATIVE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "edge" / "native"


def _target() -> str:
    if sys.platform != "linux":
        raise ToolchainMissing(f"native helpers are built for Linux only, not {sys.platform}")
    return f"{platform.machine()}-linux-gnu"


def library_path(name: str, cache_dir: Path | None = None) -> Path:
    """Where helper `name`'s library for this source and these flags is (or will be) kept.
    The key leaves out zig's version: another zig makes an equivalent library, and a node
    without zig still finds one built earlier."""
    source = (SOURCE_DIR / f"{name}.c").read_bytes()
    key = hashlib.sha256(
        b"\0".join([source, " ".join(CFLAGS).encode(), _target().encode()])
    ).hexdigest()[:16]
    return (cache_dir or native_dir()) / f"{name}-{key}.so"


def build_library(
    name: str, cache_dir: Path | None = None, tools: Toolchain | None = None
) -> Path:
    """The path of helper `name`'s library, built first if the cache lacks it.

    Raises ToolchainMissing (no zig, not Linux) or BuildFailed (zig's output attached)."""
    path = library_path(name, cache_dir)
    if path.is_file():
        return path
    tools = tools or Toolchain()
    zig = tools.zig_cc()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Built beside its final name and renamed into place: a process loading it never sees half
    # a file, and two processes building at once both end with a whole one.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as work:
        out = Path(work) / path.name
        tools.run(
            [*zig, "-target", _target(), *CFLAGS, "-o", str(out), str(SOURCE_DIR / f"{name}.c")],
            cwd=Path(work), tmp=Path(work) / "tmp", what=f"zig cc ({name}.c)",
        )  # fmt: skip
        os.replace(out, path)
    return path


HELPERS = ("ticker",)


def main() -> None:
    for name in HELPERS:
        print(f"{name}: {build_library(name)}")


if __name__ == "__main__":
    main()
