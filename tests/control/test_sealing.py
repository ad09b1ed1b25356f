"""Secret config values sealed at rest (edge.control.sealing): the cipher's bindings and typed
errors, the key file, and the control plane's database file and snapshots, whose raw bytes
never hold a secret, before or after migration 12 seals the ones kept in plaintext."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.control import store as store_module
from edge.control.errors import SecretUnavailable
from edge.control.migrations import MIGRATIONS
from edge.control.sealing import (
    KEY_FILE,
    OVERHEAD_BYTES,
    Keyring,
    SecretsKey,
    from_text,
    sealed_key_id,
    to_text,
)
from edge.control.signing import Signer
from edge.control.snapshot import build_snapshot, open_snapshot
from edge.control.store import DB_NAME, Store
from edge.errors import ConfigError
from tests.conftest import REPO
from tests.control.conftest import add_version

MakeStore = Callable[..., Store]
KEY = SecretsKey.generate()
SIGNER = Signer.generate()
SECRET = "pa55-sealed-at-rest-7d1e"
OLD_SECRET = "older-pa55-overwritten-b2c9"


def raw_bytes(directory: Path) -> bytes:
    """Every byte of every file under `directory` (database, WAL, snapshots, blobs)."""
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


# --- the cipher ---------------------------------------------------------------------------------


def test_a_sealed_value_opens_only_for_its_function_and_key_under_its_key() -> None:
    sealed = KEY.seal(SECRET, "acme/api", "token")
    assert SECRET.encode() not in sealed and len(sealed) == len(SECRET) + OVERHEAD_BYTES
    assert KEY.open(sealed, "acme/api", "token") == SECRET
    assert KEY.seal(SECRET, "acme/api", "token") != sealed  # a fresh nonce each time
    assert sealed_key_id(sealed) == KEY.key_id
    # Moved to another key, function or tenant: it does not open, with a typed error.
    for function, key in (("acme/api", "other"), ("acme/web", "token"), ("evil/api", "token")):
        with pytest.raises(SecretUnavailable) as e:
            KEY.open(sealed, function, key)
        assert e.value.status == 503 and e.value.reason == "secret_unavailable"
        assert "does not open" in e.value.message and KEY.key_id in e.value.message
    # Another key says which key the value needs, and which one it has.
    other = SecretsKey.generate()
    with pytest.raises(SecretUnavailable) as e:
        other.open(sealed, "acme/api", "token")
    assert KEY.key_id in e.value.message and other.key_id in e.value.message
    assert SECRET not in e.value.message


def test_every_changed_byte_is_a_typed_error() -> None:
    sealed = KEY.seal(SECRET, "acme/api", "token")
    for i in range(len(sealed)):
        changed = bytearray(sealed)
        changed[i] ^= 0x01
        with pytest.raises(SecretUnavailable):
            Keyring([KEY]).open(bytes(changed), "acme/api", "token")
    for cut in (b"", sealed[:OVERHEAD_BYTES - 1], sealed[:-1], sealed + b"\x00"):
        with pytest.raises(SecretUnavailable):
            KEY.open(cut, "acme/api", "token")


@given(st.binary(max_size=200))
def test_any_other_bytes_raise_the_typed_error_and_nothing_else(data: bytes) -> None:
    # Forging a value that opens takes a 128-bit tag: random bytes never do.
    for keyring in (Keyring([KEY]), Keyring()):
        with pytest.raises(SecretUnavailable):
            keyring.open(data, "acme/api", "token")
        with pytest.raises(SecretUnavailable):
            keyring.open(bytes([1]) + bytes.fromhex(KEY.key_id) + data, "acme/api", "token")


def test_a_keyring_opens_with_the_key_a_value_names() -> None:
    old, new = SecretsKey.generate(), SecretsKey.generate()
    ring = Keyring([new, old])  # during a rotation
    assert ring.open(old.seal("a", "t/f", "k"), "t/f", "k") == "a"
    assert ring.open(new.seal("b", "t/f", "k"), "t/f", "k") == "b"
    with pytest.raises(SecretUnavailable) as e:
        Keyring().open(KEY.seal("a", "t/f", "k"), "t/f", "k")
    assert KEY.key_id in e.value.message and "no secrets key" in e.value.message


def test_the_text_form_round_trips_and_anything_else_is_no_sealed_value() -> None:
    sealed = KEY.seal(SECRET, "t/f", "k")
    assert from_text(to_text(sealed)) == sealed and to_text(sealed).startswith("sealed:1:")
    for text in ("", SECRET, "sealed:1:!!!", "sealed:2:" + to_text(sealed)[9:]):
        assert from_text(text) == b""


# --- the key file -------------------------------------------------------------------------------


def test_the_key_file_is_made_once_owner_only_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "dir" / KEY_FILE
    made = SecretsKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().strip()) == 64
    assert SecretsKey.load_or_create(path).key_id == made.key_id == SecretsKey.load(path).key_id
    with pytest.raises(ConfigError) as e:
        SecretsKey.load(tmp_path / "missing.key")
    assert "missing.key" in e.value.message
    for bad in (b"abcd\n", b"zz" * 32, b"\xff" * 32, b""):
        path.write_bytes(bad)
        with pytest.raises(ConfigError) as e:
            SecretsKey.load(path)
        assert str(path) in e.value.message and "64 hex digits" in e.value.message


def test_a_named_key_file_must_exist_for_the_control_plane(tmp_path: Path) -> None:
    """A typo in --secrets-key must not start a new key (the old values would not open)."""
    r = subprocess.run(
        [sys.executable, "-m", "edge", "control", "--data", str(tmp_path / "data"),
         "--listen", "127.0.0.1:1", "--secrets-key", str(tmp_path / "typo.key")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode != 0 and "typo.key" in r.stderr, (r.stdout, r.stderr)
    assert not (tmp_path / "typo.key").exists()


# --- the database and snapshots -----------------------------------------------------------------


def deployed(store: Store, name: str = "api") -> int:
    tenants = store.tenant_names()
    t = store.create_tenant("acme") if "acme" not in tenants else 1
    add_version(store, t, name)
    store.deploy(t, name, 1, [(f"{name}.example", "/")], "u")
    return t


def test_no_secret_is_in_the_database_files_or_the_snapshot(make_store: MakeStore,
                                                            tmp_path: Path) -> None:
    store = make_store()
    t = deployed(store)
    store.set_config(t, "api", {"token": OLD_SECRET, "plain": "shown"}, frozenset({"token"}),
                     "u")
    store.set_config(t, "api", {"token": SECRET}, frozenset({"token"}), "u")
    # Values given with a deploy (`"config"` in POST .../deploy) take the same way.
    add_version(store, t, "api")
    store.deploy(t, "api", 2, None, "u", ({"with_deploy": SECRET + "-d"},
                                          frozenset({"with_deploy"})))
    snapshot = build_snapshot(store, store.revision(), SIGNER)
    files = raw_bytes(tmp_path / "data")
    for secret in (SECRET, OLD_SECRET, SECRET + "-d"):
        assert secret.encode() not in files and secret.encode() not in snapshot
    assert b"shown" in files  # non-secret values stay plaintext: the API shows them anyway
    fn = open_snapshot(snapshot, SIGNER.public_key).functions["acme/api"]
    assert Keyring([store.secrets_key]).open(fn.sealed["token"], "acme/api", "token") == SECRET
    assert Keyring([store.secrets_key]).open(fn.sealed["with_deploy"], "acme/api",
                                             "with_deploy") == SECRET + "-d"
    # A secret set again is a change every time: `changed` tells no guesser anything.
    assert store.set_config(t, "api", {"token": SECRET}, frozenset({"token"}), "u").changed
    # The listing still says what is secret, and carries no plaintext.
    values = {v.key: v for v in store.config_values(t, "api")}
    assert values["token"].secret and values["token"].to_json()["value"] is None


def test_migration_12_seals_the_secrets_kept_in_plaintext_and_scrubs_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    monkeypatch.setattr(store_module, "MIGRATIONS", {n: m for n, m in MIGRATIONS.items()
                                                     if n <= 11})
    with Store(data, secrets_key=KEY) as store:
        t = deployed(store)
        deployed(store, "web")
        store.set_config(t, "api", {"token": OLD_SECRET}, frozenset({"token"}), "u")
        store.set_config(t, "api", {"token": SECRET, "plain": "shown"}, frozenset({"token"}),
                         "u")
        store.set_config(t, "web", {"token": SECRET + "-web"}, frozenset({"token"}), "u")
        listed_before = [v.to_json() for v in store.config_values(t, "api")]
        revisions_before = store.revisions()
    as_before_12(data / DB_NAME)
    # Before 12 the values are plaintext in the file (this is what the migration is for).
    assert SECRET.encode() in raw_bytes(data) and OLD_SECRET.encode() in raw_bytes(data)
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    with Store(data, secrets_key=KEY) as store:
        assert 12 in store.schema_versions()
        files = raw_bytes(data)
        for secret in (SECRET, OLD_SECRET, SECRET + "-web"):
            assert secret.encode() not in files, secret
        assert [v.to_json() for v in store.config_values(t, "api")] == listed_before
        assert store.revisions() == revisions_before  # what changed, as it was recorded
        ring = Keyring([KEY])
        # Every revision's values open to what they were: the current and the overwritten.
        first = next(r.number for r in revisions_before if r.kind == "config")
        old = {f.state.function: f.values for f in store.config_at(first).functions}
        assert ring.open(old["acme/api"]["token"], "acme/api", "token") == OLD_SECRET
        now = {f.state.function: f.values for f in store.config_at(store.revision()).functions}
        assert ring.open(now["acme/api"]["token"], "acme/api", "token") == SECRET
        assert ring.open(now["acme/web"]["token"], "acme/web", "token") == SECRET + "-web"
        assert now["acme/api"]["plain"] == "shown"
        assert store.foreign_secrets() == {}


def as_before_12(path: Path) -> None:
    """Rewrites the database as the code before migration 12 wrote it: secret values in
    plaintext, in the table and in every "config" revision's state."""
    ring = Keyring([KEY])
    with sqlite3.connect(path) as db:
        names = dict(db.execute("SELECT f.id, t.name || '/' || f.name FROM functions f "
                                "JOIN tenants t ON t.id = f.tenant_id").fetchall())
        for fid, key, text in db.execute(
                "SELECT function_id, key, value FROM function_config WHERE secret = 1"
        ).fetchall():
            db.execute("UPDATE function_config SET value = ? WHERE function_id = ? AND key = ?",
                       (ring.open(from_text(text), names[fid], key), fid, key))
        for number, fid, state_json in db.execute(
                "SELECT number, function_id, state FROM revisions WHERE kind = 'config'"
        ).fetchall():
            state = json.loads(state_json)
            for key in state["secret"]:
                state["values"][key] = ring.open(from_text(state["values"][key]), names[fid],
                                                 key)
            db.execute("UPDATE revisions SET state = ? WHERE number = ?",
                       (json.dumps(state, sort_keys=True, separators=(",", ":")), number))


def test_a_changed_or_moved_row_reaches_the_node_as_a_typed_error(make_store: MakeStore,
                                                                  tmp_path: Path) -> None:
    """The control plane never opens secrets: a damaged row still builds a snapshot (no crash,
    no plaintext), and the node refuses that function's value alone."""
    store = make_store()
    t = deployed(store)
    deployed(store, "web")
    store.set_config(t, "api", {"token": SECRET}, frozenset({"token"}), "u")
    store.set_config(t, "web", {"token": "web-own"}, frozenset({"token"}), "u")
    db = sqlite3.connect(tmp_path / "data" / DB_NAME)
    api_row = db.execute("SELECT value FROM function_config fc JOIN functions f "
                         "ON f.id = fc.function_id WHERE f.name = 'api'").fetchone()[0]
    sealed = bytearray(from_text(api_row))
    sealed[-1] ^= 0x80
    cases = {
        "api": to_text(bytes(sealed)),  # changed
        "web": api_row,  # moved from another function: its own key name, still no good
    }
    for name, text in cases.items():
        db.execute("UPDATE function_config SET value = ? WHERE function_id = "
                   "(SELECT id FROM functions WHERE name = ?)", (text, name))
    db.commit()
    db.close()
    for name in cases:  # any change makes a revision whose state holds the rows as they are
        store.set_config(t, name, {"touch": "1"}, frozenset(), "u")
    snap = open_snapshot(build_snapshot(store, store.revision(), SIGNER), SIGNER.public_key)
    for name in cases:
        with pytest.raises(SecretUnavailable) as e:
            Keyring([store.secrets_key]).open(snap.functions[f"acme/{name}"].sealed["token"],
                                              f"acme/{name}", "token")
        assert "does not open" in e.value.message


def test_a_row_that_is_not_sealed_never_reaches_a_snapshot(make_store: MakeStore,
                                                           tmp_path: Path) -> None:
    store = make_store()
    t = deployed(store)
    store.set_config(t, "api", {"token": SECRET}, frozenset({"token"}), "u")
    with sqlite3.connect(tmp_path / "data" / DB_NAME) as db:
        db.execute("UPDATE function_config SET value = ?", (SECRET,))
    assert store.foreign_secrets() == {"": 1}  # the control plane warns at start
    store.set_config(t, "api", {"touch": "1"}, frozenset(), "u")
    snapshot = build_snapshot(store, store.revision(), SIGNER)
    assert SECRET.encode() not in snapshot
    fn = open_snapshot(snapshot, SIGNER.public_key).functions["acme/api"]
    with pytest.raises(SecretUnavailable) as e:
        Keyring([store.secrets_key]).open(fn.sealed["token"], "acme/api", "token")
    assert "not a sealed value" in e.value.message


def test_a_store_opened_with_another_key_counts_what_it_cannot_reseal(tmp_path: Path) -> None:
    with Store(tmp_path, secrets_key=KEY) as store:
        t = deployed(store)
        store.set_config(t, "api", {"a": "1", "b": "2"}, frozenset({"a", "b"}), "u")
    other = SecretsKey.generate()
    with Store(tmp_path, secrets_key=other) as store:
        assert store.foreign_secrets() == {KEY.key_id: 2}
    # By default the store uses (and makes) DATA/secrets.key.
    with Store(tmp_path / "fresh") as store:
        assert (tmp_path / "fresh" / KEY_FILE).exists()
        assert store.secrets_key.key_id == SecretsKey.load(tmp_path / "fresh" / KEY_FILE).key_id


# --- rotation -----------------------------------------------------------------------------------


def sealed_texts(path: Path) -> list[tuple[str, str, str]]:
    """(function, key, sealed text) of every secret the database keeps, history included."""
    with sqlite3.connect(path) as db:
        out = [(f"acme/{r[0]}", r[1], r[2]) for r in db.execute(
            "SELECT f.name, c.key, c.value FROM function_config c JOIN functions f "
            "ON f.id = c.function_id WHERE c.secret = 1")]
        for (state_json,) in db.execute("SELECT state FROM revisions WHERE kind = 'config'"):
            state = json.loads(state_json)
            out += [(state["function"], k, state["values"][k]) for k in state["secret"]]
    return out


def test_resealing_moves_every_secret_to_the_new_key(tmp_path: Path) -> None:
    old, new = SecretsKey.generate(), SecretsKey.generate()
    with Store(tmp_path, secrets_key=old) as store:
        t = deployed(store)
        deployed(store, "web")
        deployed(store, "plain")
        store.set_config(t, "api", {"token": OLD_SECRET}, frozenset({"token"}), "u")
        store.set_config(t, "api", {"token": SECRET, "p": "v"}, frozenset({"token"}), "u")
        store.set_config(t, "web", {"a": "1", "b": "2"}, frozenset({"a", "b"}), "u")
        store.set_config(t, "plain", {"p": "v"}, frozenset(), "u")
        before = store.revision()
        result = store.reseal_secrets(new, "rotate")
        # Three current values (api's token, web's a and b) and four the log remembers.
        assert result.values == 3 + 4 and result.functions == ("acme/api", "acme/web")
        assert result.revisions == (before + 1, before + 2) == (store.revision() - 1,
                                                                store.revision())
        assert store.secrets_key is new and store.foreign_secrets() == {}
        rows = [r for r in store.revisions() if r.number in result.revisions]
        assert [(r.kind, r.author, r.function) for r in rows] == [
            ("config", "rotate", "acme/api"), ("config", "rotate", "acme/web")]
        assert rows[1].change == {"a": ["(secret)", "(secret)"], "b": ["(secret)", "(secret)"]}
        texts = sealed_texts(tmp_path / DB_NAME)
        assert len(texts) == 3 + 4 + 3  # rows, the log before, the rotation's revisions
        for function, key, text in texts:
            assert sealed_key_id(from_text(text)) == new.key_id
            with pytest.raises(SecretUnavailable):
                Keyring([old]).open(from_text(text), function, key)
        now = {f.state.function: f.values for f in store.config_at(store.revision()).functions}
        assert Keyring([new]).open(now["acme/api"]["token"], "acme/api", "token") == SECRET
        assert now["acme/plain"] == {"p": "v"}
        # A second run (after a crash, say) finds every value under the new key already.
        assert store.reseal_secrets(new, "rotate").values == 3 + 4 + 3


def test_a_current_value_no_key_opens_stops_the_rotation_whole(tmp_path: Path) -> None:
    old, new = SecretsKey.generate(), SecretsKey.generate()
    with Store(tmp_path, secrets_key=old) as store:
        t = deployed(store)
        store.set_config(t, "api", {"token": SECRET}, frozenset({"token"}), "u")
        store.set_config(t, "api", {"other": SECRET}, frozenset({"other"}), "u")
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("UPDATE function_config SET value = 'sealed:1:AAAA' WHERE key = 'token'")
        first = db.execute("SELECT MIN(number) FROM revisions WHERE kind = 'config'").fetchone()
        db.execute("UPDATE revisions SET state = json_set(state, '$.values.token', "
                   "'sealed:1:AAAA') WHERE number = ?", first)
    before = sealed_texts(tmp_path / DB_NAME)
    with Store(tmp_path, secrets_key=old) as store:
        revision = store.revision()
        with pytest.raises(SecretUnavailable) as e:
            store.reseal_secrets(new, "rotate")
        assert "'token'" in e.value.message
        assert store.revision() == revision and store.secrets_key is old
    assert sealed_texts(tmp_path / DB_NAME) == before  # rolled back whole
    # Set again, the value opens; the damaged one left in history stays as it is.
    with Store(tmp_path, secrets_key=old) as store:
        store.set_config(t, "api", {"token": SECRET}, frozenset({"token"}), "u")
        assert store.reseal_secrets(new, "rotate").values == 2 + (1 + 2 + 2 - 1)
    assert ("acme/api", "token", "sealed:1:AAAA") in sealed_texts(tmp_path / DB_NAME)
