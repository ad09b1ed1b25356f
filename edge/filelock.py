"""An exclusive lock on a file, shared between processes (flock), for caches that several
processes fill: the first to take a key's lock makes its entry, the others wait and read it."""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(lock_path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Holds `lock_path`'s lock (the file is made if missing). `on_wait` is told first when
    another holder makes this one wait. Raises OSError when the file cannot be opened."""
    with lock_path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        yield  # released when the file closes
