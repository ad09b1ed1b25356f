"""What a node keeps on disk to serve without its control plane (static stability).

The last applied snapshot envelope (still signed: it is verified again when loaded, so a file
changed on disk is refused like one changed on the wire) and the component blobs by sha256.
Every write is atomic (temp file + rename), so a crash leaves the old file or the new one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

SNAPSHOT_FILE = "snapshot.cbor"


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class NodeState:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.blobs = directory / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)

    def load_snapshot(self) -> bytes | None:
        try:
            return (self.directory / SNAPSHOT_FILE).read_bytes()
        except FileNotFoundError:
            return None

    def save_snapshot(self, envelope: bytes) -> None:
        write_atomically(self.directory / SNAPSHOT_FILE, envelope)

    def has_blob(self, sha256: str) -> bool:
        return (self.blobs / sha256).exists()

    def blob(self, sha256: str) -> bytes | None:
        """The blob, only if its bytes still hash to its name."""
        try:
            data = (self.blobs / sha256).read_bytes()
        except FileNotFoundError:
            return None
        return data if hashlib.sha256(data).hexdigest() == sha256 else None

    def save_blob(self, sha256: str, data: bytes) -> None:
        write_atomically(self.blobs / sha256, data)
