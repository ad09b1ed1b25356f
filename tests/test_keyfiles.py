"""The node's secrets key files followed while it runs (edge.node.keyfiles): which stamps count
as a change and which keyring a reload leaves, with stat results and read outcomes given; then
the thin I/O on real files in a temporary directory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from edge.control.sealing import Keyring, SecretsKey
from edge.errors import ConfigError
from edge.node.keyfiles import KeyFiles, Stamp, read_keys, stamp, stamps

NEW, OLD = SecretsKey(b"\x01" * 32), SecretsKey(b"\x02" * 32)
PATHS = (Path("/keys/current.key"), Path("/keys/previous.key"))
START: tuple[Stamp, ...] = ((1, 10, 65, 1_000, 1_000), (1, 11, 65, 1_000, 1_000))
BAD = ConfigError("secrets key file /keys/current.key must hold 64 hex digits")


def test_only_a_different_device_inode_size_mtime_or_ctime_is_a_change() -> None:
    files = KeyFiles(PATHS, START, Keyring([NEW, OLD]))
    assert not files.stale(START)
    assert not files.stale(list(START))  # any sequence
    for changed in ((2, 10, 65, 1_000, 1_000), (1, 12, 65, 1_000, 1_000),
                    (1, 10, 66, 1_000, 1_000), (1, 10, 65, 1_001, 1_000),
                    (1, 10, 65, 1_000, 1_001)):
        assert files.stale((changed, START[1]))
        assert files.stale((START[0], changed))
    assert files.stale((START[0], "secrets key file /keys/previous.key: No such file"))


def test_new_files_with_other_keys_replace_the_keyring_and_ask_for_a_reopen() -> None:
    # Started with the old key, its previous file named but absent (no rotation ran yet).
    absent = "secrets key file /keys/previous.key: No such file or directory"
    files = KeyFiles(PATHS, (START[0], absent), Keyring([OLD]), optional=PATHS[1:])
    assert files.optional == frozenset(PATHS[1:])
    rotated = ((1, 20, 65, 2_000, 2_000), (1, 21, 65, 2_000, 2_000))
    reload = files.settle(rotated, [NEW, OLD])
    assert reload.changed and reload.error == "" and files.error == ""
    assert sorted(reload.keyring.key_ids) == sorted([NEW.key_id, OLD.key_id])
    assert files.keyring is reload.keyring
    assert not files.stale(rotated)
    # The same keys again (the files rewritten, or current and previous swapped): taken, but
    # nothing served needs opening again.
    swapped = ((1, 30, 65, 3_000, 3_000), (1, 31, 65, 3_000, 3_000))
    again = files.settle(swapped, [OLD, NEW])
    assert not again.changed and again.error == ""
    assert not files.stale(swapped)
    # The rotation done, the previous file deleted: the old key goes.
    ended = (swapped[0], absent)
    assert files.stale(ended)
    dropped = files.settle(ended, [NEW, None])
    assert dropped.changed and files.keyring.key_ids == [NEW.key_id] and files.error == ""


def test_a_bad_or_missing_file_keeps_the_keyring_until_the_files_change_again() -> None:
    files = KeyFiles(PATHS, START, Keyring([OLD]))
    before = files.keyring
    broken = ((1, 40, 9, 4_000, 4_000), START[1])
    reload = files.settle(broken, [BAD, OLD])
    assert not reload.changed and reload.keyring is before and files.keyring is before
    assert reload.error == files.error
    assert BAD.message in files.error and f"still opening secrets with key {OLD.key_id}" \
        in files.error
    # The same broken files are no change: not read (nor reported) again at every look.
    assert not files.stale(broken)
    # A missing file fails its stat: that reason is its stamp.
    missing = ("secrets key file /keys/current.key: No such file or directory", START[1])
    assert files.stale(missing)
    gone = files.settle(missing, [ConfigError(str(missing[0])), OLD])
    assert gone.keyring is before and "No such file" in files.error
    assert not files.stale(missing)
    # Fixed: taken, the error goes.
    fixed = ((1, 41, 65, 5_000, 5_000), START[1])
    assert files.stale(fixed)
    recovered = files.settle(fixed, [NEW, OLD])
    assert recovered.changed and recovered.error == "" and files.error == ""
    assert sorted(files.keyring.key_ids) == sorted([NEW.key_id, OLD.key_id])


def test_every_file_must_be_good_for_any_to_be_taken() -> None:
    files = KeyFiles(PATHS, START, Keyring([OLD]))
    reload = files.settle(((1, 50, 65, 6_000, 6_000), (1, 51, 3, 6_000, 6_000)), [NEW, BAD])
    assert not reload.changed and files.keyring.key_ids == [OLD.key_id]
    assert BAD.message in reload.error


def test_no_key_files_never_change() -> None:
    files = KeyFiles.none()
    assert files.paths == () and files.keyring.key_ids == []
    assert not files.stale(stamps(files.paths))
    assert "no key" in KeyFiles((), (), Keyring()).settle((), [BAD]).error


def test_stamps_and_reads_of_real_files(tmp_path: Path) -> None:
    current, previous = tmp_path / "current.key", tmp_path / "previous.key"
    SecretsKey.load_or_create(current)
    files = KeyFiles.load([current])
    assert not files.stale(stamps([current]))
    missing = stamp(previous)
    assert isinstance(missing, str) and "previous.key" in missing and "No such file" in missing
    # Replaced the way an operator would (a new file renamed over it): another inode.
    (tmp_path / "next.key").write_text(NEW.key_id)  # not a key: 16 hex digits
    os.replace(tmp_path / "next.key", current)
    now = stamps([current])
    assert files.stale(now)
    [loaded] = read_keys([current])
    assert isinstance(loaded, ConfigError) and "current.key" in loaded.message
    reload = files.settle(now, [loaded])
    assert reload.error and files.keyring is reload.keyring
    # Written in place with a good key: the size and mtime move.
    current.write_text((b"\x03" * 32).hex() + "\n")
    fixed = stamps([current])
    assert files.stale(fixed)
    taken = files.settle(fixed, read_keys([current]))
    assert taken.changed and taken.error == ""
    assert files.keyring.key_ids == [SecretsKey(b"\x03" * 32).key_id]



def test_a_file_rewritten_in_place_with_its_size_and_mtime_kept_is_a_change(
    tmp_path: Path,
) -> None:
    """`cp new.key current.key` then `touch -r` (or an editor saving twice within the mtime's
    granularity) keeps the inode, the size and the mtime: the node kept opening secrets with
    the old key until it was restarted. The ctime moved, and utime cannot set it back."""
    current = tmp_path / "current.key"
    current.write_text((b"\x03" * 32).hex() + "\n")
    files = KeyFiles.load([current])
    before = current.stat()
    _after_a_ctime_tick(tmp_path, before.st_ctime_ns)
    current.write_text((b"\x04" * 32).hex() + "\n")  # truncated and written: the same inode
    os.utime(current, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = current.stat()
    assert (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns)
    now = stamps([current])
    assert files.stale(now)
    taken = files.settle(now, read_keys([current]))
    assert taken.changed and files.keyring.key_ids == [SecretsKey(b"\x04" * 32).key_id]


def _after_a_ctime_tick(directory: Path, ctime_ns: int) -> None:
    """Returns once a file changed now gets a ctime after `ctime_ns`. The kernel stamps
    changes with a clock that moves in ticks (a few ms): two writes within one tick get the
    same ctime, which no stat tells apart."""
    probe = directory / "probe"
    for _ in range(10_000):
        probe.write_bytes(b"")
        if probe.stat().st_ctime_ns > ctime_ns:
            return
        time.sleep(0.001)
    raise AssertionError("the file system's ctime did not move in 10 s")


def test_an_absent_file_is_no_key_only_where_it_is_optional(tmp_path: Path) -> None:
    current, previous = tmp_path / "current.key", tmp_path / "previous.key"
    SecretsKey.load_or_create(current)
    files = KeyFiles.load([current, previous], optional=[previous])
    assert files.keyring.key_ids == [SecretsKey.load(current).key_id]
    [key, absent] = read_keys([current, previous], [previous])
    assert isinstance(key, SecretsKey) and absent is None
    [required] = read_keys([previous])
    assert isinstance(required, ConfigError) and "No such file" in required.message
    # An optional file that is there must still be a key.
    previous.write_text("not a key\n")
    [_, bad] = read_keys([current, previous], [previous])
    assert isinstance(bad, ConfigError) and "previous.key" in bad.message


def test_a_bad_or_missing_file_at_start_stops_the_node(tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    with pytest.raises(ConfigError, match=r"bad\.key"):
        KeyFiles.load([bad])
    with pytest.raises(ConfigError, match=r"missing\.key: No such file"):
        KeyFiles.load([tmp_path / "missing.key"])


def test_an_optional_file_that_cannot_be_looked_at_is_an_error_not_an_exception(
    tmp_path: Path,
) -> None:
    """Only absence is no key. Another failure to look (EACCES on a node not running as root,
    EIO; here a name too long, which root meets too) raised out of the reload and ended the
    follower's loop: the node then never took another revision."""
    current = tmp_path / "current.key"
    SecretsKey.load_or_create(current)
    unreachable = tmp_path / ("x" * 300) / "previous.key"
    [key, read] = read_keys([current, unreachable], [unreachable])
    assert isinstance(key, SecretsKey)
    assert isinstance(read, ConfigError)
    assert str(unreachable) in read.message and "File name too long" in read.message
    with pytest.raises(ConfigError, match="File name too long"):  # at start: named, no traceback
        KeyFiles.load([current, unreachable], optional=[unreachable])
