"""Online secrets key rotation: `POST /v1/secrets-key/rotate` (admin scope) on a running control
plane, nodes serving throughout (`edge rotate-secrets-key --online`).

A running control plane keeps its secrets key in memory and holds its data directory's lock
(edge.control.datalock), so the rotation runs inside it rather than beside it:

1. NEW is read from the file the operator named, on the control plane's machine (made, 0600,
   if it does not exist, as the offline command does). A file that holds no key, or holds the
   current key, is refused before anything changes.
2. `Store.reseal_secrets` seals every secret again under NEW in one transaction under the
   store's lock, and switches the store's key: every seal after it (a config write racing the
   rotation included) is under NEW.
3. Only now that the transaction committed, the old key is written to `<key file>.previous`
   and NEW over the key file the control plane was started with (each 0600, atomically: a new
   file renamed over it).

Why write over the key file rather than, say, record NEW's path in the database: the key file
is what every reader of the key already reads (the control plane restarted with its usual
command line, `edge rotate-secrets-key` offline, a backup, nodes on the same machine under
`edge up`), so none of them needs to learn anything new. A crash between 2 and 3 leaves the
database under NEW and the key file with the old key: the control plane then starts with a
`secrets_key_mismatch` warning naming NEW's key id; copy NEW over the key file and start it
again.

The admin may name any path the control plane's user can read or create: it learns only
whether a key is there (never the key), and the file made holds a fresh random key.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.control.errors import (
    BadSecretsKey,
    Conflict,
    KeyFileNotSaved,
    RotationRunning,
    SecretsKeyInUse,
    SecretUnavailable,
)
from edge.control.records import Reseal
from edge.control.sealing import SecretsKey
from edge.control.store import Store
from edge.errors import ConfigError

PREVIOUS_SUFFIX = ".previous"


def reseal_json(result: Reseal, old_key_id: str, new_key_id: str,
                new_key_file: Path) -> dict[str, Any]:
    """What a rotation did, online or offline (`edge rotate-secrets-key --json`)."""
    return {"values": result.values, "functions": list(result.functions),
            "revisions": list(result.revisions), "old_key_id": old_key_id,
            "new_key_id": new_key_id, "new_key_file": str(new_key_file)}


@dataclass(frozen=True)
class Rotated:
    result: Reseal
    old_key_id: str
    new_key_id: str
    new_key_file: Path
    key_file: Path  # now holds NEW
    previous_key_file: Path  # now holds the old key

    def to_json(self) -> dict[str, Any]:
        return {**reseal_json(self.result, self.old_key_id, self.new_key_id, self.new_key_file),
                "key_file": str(self.key_file), "previous_key_file": str(self.previous_key_file)}


def previous_file(key_file: Path) -> Path:
    return key_file.with_name(key_file.name + PREVIOUS_SUFFIX)


class KeyRotation:
    """The online rotations of one control plane's key, one at a time."""

    def __init__(self, store: Store, key_file: Path | None) -> None:
        """`key_file`: the file the control plane read its key from (None: an embedded one
        with a key given in memory, which cannot keep a new key for its next start)."""
        self.store = store
        self.key_file = key_file
        self._running = threading.Lock()

    def rotate(self, new_key_file: Path, author: str) -> Rotated:
        """Re-seals everything under the key in `new_key_file` (an absolute path); see the
        module's steps. Runs on a worker thread: it does file and database I/O."""
        if self.key_file is None:
            raise Conflict("this control plane was started without a secrets key file, so it "
                           "could not keep a new key: rotate offline (edge rotate-secrets-key)")
        # Two at once would both commit and leave the key file with whichever wrote it last.
        if not self._running.acquire(blocking=False):
            raise RotationRunning("another secrets key rotation is running on this control "
                                  "plane; nothing changed")
        try:
            return self._rotate(self.key_file, new_key_file, author)
        finally:
            self._running.release()

    def _rotate(self, key_file: Path, new_key_file: Path, author: str) -> Rotated:
        previous = previous_file(key_file)
        # Checked before NEW is read, which would make a key there.
        if os.path.realpath(new_key_file) == os.path.realpath(previous):
            raise BadSecretsKey(f"{new_key_file} is where the old key is kept after a rotation; "
                                "give the new key another path (nothing changed)")
        new = _new_key(new_key_file)
        current = self.store.secrets_key
        if new.key_id == current.key_id:
            raise SecretsKeyInUse(f"{new_key_file} holds the current secrets key "
                                  f"({current.key_id}); nothing changed")
        # Checked now so that a directory that takes no writes refuses before the commit;
        # the files themselves are written after it, so a refusal leaves them as they were.
        if not os.access(key_file.parent, os.W_OK):
            raise KeyFileNotSaved(f"this control plane cannot write in {key_file.parent}, "
                                  "where its key file is; nothing changed")
        try:
            result = self.store.reseal_secrets(new, author)
        except SecretUnavailable as e:
            raise Conflict(f"nothing changed: {e.message}; set that value again (or remove it), "
                           "then rotate") from None
        failed = []
        for key, path in ((current, previous), (new, key_file)):  # the old key kept first
            try:
                key.save(path)
            except OSError as e:
                failed.append(f"{path}: {e.strerror}")
        if failed:
            raise KeyFileNotSaved(
                f"every secret is sealed under key {new.key_id} now, and this control plane "
                f"seals with it, but writing its key files failed ({'; '.join(failed)}). Copy "
                f"{new_key_file} to {key_file} (keeping the old key) before it restarts"
            )
        return Rotated(result, current.key_id, new.key_id, new_key_file, key_file, previous)


def _new_key(path: Path) -> SecretsKey:
    if not path.is_absolute():
        raise BadSecretsKey(f"the new key file must be an absolute path on the control plane's "
                            f"machine, not {str(path)!r}")
    try:
        return SecretsKey.load_or_create(path)
    except ConfigError as e:
        raise BadSecretsKey(f"{e.message}; nothing changed") from None
    except OSError as e:  # could not make it: no such directory, no permission
        raise BadSecretsKey(f"cannot make secrets key file {path}: {e.strerror}; "
                            "nothing changed") from None
