"""The node's secrets key files, followed while it runs: a key rotation needs no node restart.

At start the node reads `secrets_key_file` and `previous_secrets_key_file` (a bad one stops it
then). After that it compares each file's stat identity (device, inode, size, mtime and ctime
in ns: a stat, no read) at every snapshot it applies, every heartbeat and on SIGHUP; when one
differs it reads both again. The ctime is what catches a file rewritten in place with the same
size and mtime (`cp` then `touch -r`, an editor within the mtime's granularity): every write
moves it, and utime cannot set it back. Only files that are all good keys replace the keyring:
a file that is missing, unreadable or not a key (half written, a typo) keeps the keys the node
has, and the error is reported until the files change again. The previous key's file alone may
be absent, at start too: no rotation runs, or it ended and the old key was deleted. `KeyFiles`
decides; `stamps` and `read_keys` do the I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.control.sealing import Keyring, SecretsKey
from edge.errors import ConfigError

# (device, inode, size, mtime_ns, ctime_ns); a str when the file cannot be statted (why, naming
# it): a stat that keeps failing the same way is no change, so it is not read and reported again
# at every look.
Stamp = tuple[int, int, int, int, int] | str
# What reading one file gave: its key, why it is no key, or None (an optional file is absent).
Read = SecretsKey | ConfigError | None


@dataclass(frozen=True)
class Reload:
    keyring: Keyring  # what secrets open with from now on
    changed: bool  # its keys differ from before: what is served must be opened again
    error: str  # why the files were not taken ("" when they were)


class KeyFiles:
    """The key files last read (by stamp) and the keyring they gave."""

    def __init__(
        self, paths: Sequence[Path], stamps: Sequence[Stamp], keyring: Keyring,
        optional: Collection[Path] = (),
    ) -> None:
        """`optional`: those of `paths` whose absence is no key rather than an error."""
        self.paths = tuple(paths)
        self.optional = frozenset(optional)
        self._stamps = tuple(stamps)
        self.keyring = keyring
        self.error = ""

    def stale(self, stamps: Sequence[Stamp]) -> bool:
        """Whether the files changed since they were last read."""
        return tuple(stamps) != self._stamps

    def settle(self, stamps: Sequence[Stamp], loaded: Sequence[Read]) -> Reload:
        """Takes what reading the files (stamped `stamps` just before) gave."""
        # Stamps taken before the read: a file replaced during it differs at the next look.
        self._stamps = tuple(stamps)
        errors = [k.message for k in loaded if isinstance(k, ConfigError)]
        if errors:
            self.error = (f"{'; '.join(errors)}; still opening secrets with "
                          f"{describe(self.keyring)}")
            return Reload(self.keyring, False, self.error)
        keyring = Keyring(k for k in loaded if isinstance(k, SecretsKey))
        changed = set(keyring.key_ids) != set(self.keyring.key_ids)
        self.keyring, self.error = keyring, ""
        return Reload(keyring, changed, "")

    @classmethod
    def none(cls) -> KeyFiles:
        """No key file: every function with a secret answers 503 secret_unavailable."""
        return cls((), (), Keyring())

    @classmethod
    def load(cls, paths: Sequence[Path], optional: Collection[Path] = ()) -> KeyFiles:
        """The files read at start: a ConfigError naming the first bad one stops the node."""
        taken = stamps(paths)
        loaded = read_keys(paths, optional)
        for read in loaded:
            if isinstance(read, ConfigError):
                raise read
        return cls(paths, taken, Keyring(k for k in loaded if isinstance(k, SecretsKey)),
                   optional)


def describe(keyring: Keyring) -> str:
    ids = keyring.key_ids
    return f"key{'s' if len(ids) > 1 else ''} {', '.join(ids)}" if ids else "no key"


def stamp(path: Path) -> Stamp:
    try:
        st = path.stat()
    except OSError as e:
        return f"secrets key file {path}: {e.strerror}"
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def stamps(paths: Sequence[Path]) -> tuple[Stamp, ...]:
    return tuple(stamp(p) for p in paths)


def read_keys(paths: Sequence[Path], optional: Collection[Path] = ()) -> list[Read]:
    loaded: list[Read] = []
    for path in paths:
        if path in optional and _absent(path):
            loaded.append(None)
            continue
        try:
            loaded.append(SecretsKey.load(path))
        except ConfigError as e:
            loaded.append(e)
    return loaded


def _absent(path: Path) -> bool:
    # Not Path.exists(): it raises for a failure other than absence (EACCES, EIO), which ended
    # the follower's loop. Such a file is read anyway, and the read's error names it.
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False
