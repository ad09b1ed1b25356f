"""Content-addressed build cache: same inputs, same component, no compiler run.

The key hashes everything that can change the output: the project's files, the WIT contract,
the language SDK, the toolchain's version and the build recipe. Entries are whole components
stored as `<key>.wasm`; writes go through a temp file and a rename so a concurrent reader never
sees half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from edge.dev_vars import DEV_VARS_FILE
from edge.errors import ConfigError
from edge.filelock import exclusive

# Bump when a language's build recipe changes in a way the inputs do not show.
RECIPE_VERSION = "1"

# Not sources: build output, tool caches and VCS metadata.
SKIP_DIRS = frozenset({"build", "node_modules", "__pycache__", ".git", ".mypy_cache"})
# `edge dev`'s local secrets: never a build input, so editing them does not make a new build.
SKIP_FILES = frozenset({DEV_VARS_FILE})


DEFAULT_MAX_MIB = 2048
# A lock file whose key has no component (a build that failed) is removed after this long.
STALE_LOCK_S = 3600.0
LOCKS_DIR = "locks"


def max_cache_bytes() -> int:
    """`EDGE_CACHE_MAX_MIB` (default 2048): a Python save adds ~19 MB, a JS one ~12 MB, so a
    day of edits would otherwise fill the disk."""
    env = os.environ.get("EDGE_CACHE_MAX_MIB", "").strip()
    if not env:
        return DEFAULT_MAX_MIB * 1024 * 1024
    if not env.isdigit():
        raise ConfigError(f"EDGE_CACHE_MAX_MIB must be a whole number of MiB, got {env!r}")
    return int(env) * 1024 * 1024


def default_cache_dir() -> Path:
    env = os.environ.get("EDGE_CACHE_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "edge" / "builds"


def project_files(project_dir: Path) -> list[Path]:
    """Every file of the project except build output and hidden or tool directories."""
    out: list[Path] = []
    for root, dirs, files in os.walk(project_dir):
        # Pruned in place so os.walk does not descend; sorted for a stable hash order.
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        out.extend(
            Path(root) / f for f in sorted(files) if not f.endswith(".pyc") and f not in SKIP_FILES
        )
    return out


def tree_files(root: Path) -> list[Path]:
    return project_files(root) if root.is_dir() else [root]


def cache_key(lang: str, toolchain_version: str, groups: Iterable[tuple[str, Path]]) -> str:
    """sha256 over (label, relative path, content) of every file, length-prefixed so that no
    two different inputs can produce the same byte stream."""
    h = hashlib.sha256()

    def put(data: bytes) -> None:
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    put(f"edge-build {RECIPE_VERSION} {lang}".encode())
    put(toolchain_version.encode())
    for label, root in groups:
        for path in tree_files(root):
            rel = path.relative_to(root) if root.is_dir() else Path(path.name)
            put(f"{label}:{rel.as_posix()}".encode())
            put(path.read_bytes())
    return h.hexdigest()


def lookup(cache_dir: Path, key: str) -> Path | None:
    path = cache_dir / f"{key}.wasm"
    if not path.is_file():
        return None
    with contextlib.suppress(OSError):  # a read-only cache still hits
        os.utime(path)  # recently used: the last to be evicted
    return path


@contextlib.contextmanager
def building(cache_dir: Path, key: str, on_wait: Callable[[], None]) -> Iterator[None]:
    """Holds `key`'s lock while its component is looked up and, on a miss, built, so a second
    build of the same inputs (`edge dev` saving while `edge build` runs, parallel test workers)
    waits for the first and takes its component from the cache instead of compiling it again.
    `on_wait` is told when another build holds the lock."""
    with contextlib.ExitStack() as held:
        # A cache folder that cannot be written builds unlocked: it caches nothing either.
        with contextlib.suppress(OSError):
            (cache_dir / LOCKS_DIR).mkdir(parents=True, exist_ok=True)
            held.enter_context(exclusive(cache_dir / LOCKS_DIR / f"{key}.lock", on_wait))
        yield


def atomic_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        # mkstemp creates 0600; components are not secrets and other users (a node) read them.
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def store(cache_dir: Path, key: str, component: Path, max_bytes: int | None = None) -> None:
    # A cache that cannot be written (read-only home in CI, full disk) only costs speed.
    with contextlib.suppress(OSError):
        atomic_copy(component, cache_dir / f"{key}.wasm")
        evict(cache_dir, max_cache_bytes() if max_bytes is None else max_bytes, keep=key)


def evict(cache_dir: Path, max_bytes: int, keep: str) -> None:
    """Deletes the least recently used components until the cache holds at most `max_bytes`
    (`keep`, just stored, stays). Another process may be copying one out as it goes: the
    build treats a hit that vanished as a miss."""
    entries = []
    for path in cache_dir.glob("*.wasm"):
        with contextlib.suppress(OSError):
            st = path.stat()
            entries.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _mtime, size, path in sorted(entries):
        if total <= max_bytes:
            break
        if path.stem != keep:
            path.unlink(missing_ok=True)
            total -= size
    remove_stale_locks(cache_dir, time.time())


def remove_stale_locks(cache_dir: Path, now_s: float) -> None:
    """Lock files of keys without a component (failed builds, evicted ones) once they are
    `STALE_LOCK_S` old. Removing one a build still holds costs at most a second compile of
    that key, never a wrong component: components are written whole, by rename."""
    for lock in (cache_dir / LOCKS_DIR).glob("*.lock"):
        with contextlib.suppress(OSError):
            if (
                not (cache_dir / f"{lock.stem}.wasm").exists()
                and now_s - lock.stat().st_mtime > STALE_LOCK_S
            ):
                lock.unlink()
