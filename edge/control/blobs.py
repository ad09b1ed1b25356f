"""Component bytes on disk, addressed by sha256: `blobs/<sha256[:2]>/<sha256>`.

A blob is written and fsynced (file, then directory) before the transaction that references it
commits. A crash in between leaves an unreferenced blob, which is harmless; it never leaves a
version whose bytes are missing.

The most recently read blobs also stay in memory (up to `memory_bytes`): after a deploy every
node asks for the same new blob at once. What is in memory is what the disk held when first read
(nodes verify every blob against its signed sha256 either way).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

from edge.control.errors import NotFound
from edge.control.signing import fsync_dir

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MEMORY_BYTES = 128 * 1024 * 1024


class BlobStore:
    def __init__(self, root: Path, memory_bytes: int = MEMORY_BYTES) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._memory_bytes = memory_bytes
        self._recent: OrderedDict[str, bytes] = OrderedDict()  # least recently used first
        self._recent_lock = threading.Lock()

    def cached(self, sha256: str) -> bytes | None:
        """The blob if it is in memory (no I/O), else None."""
        with self._recent_lock:
            data = self._recent.get(sha256)
            if data is not None:
                self._recent.move_to_end(sha256)
            return data

    def _remember(self, sha256: str, data: bytes) -> None:
        if len(data) > self._memory_bytes:
            return
        with self._recent_lock:
            self._recent[sha256] = data
            self._recent.move_to_end(sha256)
            total = sum(len(b) for b in self._recent.values())
            while total > self._memory_bytes:
                _, dropped = self._recent.popitem(last=False)
                total -= len(dropped)

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
        data = self.cached(sha256)
        if data is not None:
            return data
        try:
            data = self.path(sha256).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no blob {sha256}") from None
        self._remember(sha256, data)
        return data

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    @staticmethod
    def _intact(path: Path, digest: str) -> bool:
        return hashlib.sha256(path.read_bytes()).hexdigest() == digest
