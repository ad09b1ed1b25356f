"""One user of a control plane's data directory at a time.

`edge control` holds the lock while it runs; `edge rotate-secrets-key` takes it for its
transaction. Two control planes on one database would each keep their own idea of the signing
and secrets keys and of the revision counter's cache, and a rotation under a running control
plane would leave it sealing new secrets with the old key (the online rotation runs inside the
control plane instead: edge.control.rotation). An OS lock (flock) on a file in the
directory goes with the process, so a killed control plane leaves nothing to clean up.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from edge.errors import ConfigError

LOCK_FILE = "control.lock"


@contextlib.contextmanager
def hold(data_dir: Path, who: str) -> Iterator[None]:
    """Holds the data directory's lock for `who` (its pid written in the file, for the error
    the next one gets), or raises ConfigError saying which process has it."""
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(
                f"{data_dir} is in use by {holder}: stop it first (one control plane, or one "
                f"`edge rotate-secrets-key`, per data directory at a time)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{who} (pid {os.getpid()})\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
