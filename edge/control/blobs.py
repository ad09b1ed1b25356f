"""Component bytes on disk, addressed by sha256: `blobs/<sha256[:2]>/<sha256>`.

A blob is written and fsynced (file, then directory) before the transaction that references it
commits. A crash in between leaves an unreferenced blob, which is harmless; it never leaves a
version whose bytes are missing.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from edge.control.errors import NotFound
from edge.control.signing import fsync_dir

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise NotFound(f"no blob {sha256!r}")
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        """Stores `data` durably and returns its sha256 (hex)."""
        digest = hashlib.sha256(data).hexdigest()
        final = self.path(digest)
        if final.exists() and self._intact(final, digest):
            return digest
        final.parent.mkdir(parents=True, exist_ok=True)
        # A per-process temporary name: two uploads of the same bytes never share a tmp file.
        tmp = final.with_name(f".{digest}.{os.getpid()}.{id(data)}.tmp")
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
        return digest

    def get(self, sha256: str) -> bytes:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no blob {sha256}") from None

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    @staticmethod
    def _intact(path: Path, digest: str) -> bool:
        return hashlib.sha256(path.read_bytes()).hexdigest() == digest
