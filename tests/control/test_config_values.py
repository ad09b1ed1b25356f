"""Deploy-time config values: the store's revisions, the snapshot's strict "config" field, and
the API over real sockets (scopes, tenants, validation, secrets never shown)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cbor2
import pytest

from edge.control import store as store_module
from edge.control.errors import BadConfigKey, SnapshotRejected, TooManyConfigKeys
from edge.control.migrations import MIGRATIONS
from edge.control.sealing import OVERHEAD_BYTES
from edge.control.signing import Signer, canonical_cbor
from edge.control.snapshot import build_snapshot, open_snapshot, sign_payload
from edge.control.store import Store
from edge.control.values import MAX_KEYS, MAX_VALUE_BYTES, parse_assignments, parse_change
from edge.errors import BadRequest, UsageError
from tests.control.conftest import ControlServer, add_version
from tests.control.test_api import deployed, upload

MakeStore = Callable[..., Store]
Start = Callable[..., ControlServer]
SIGNER = Signer.generate()
SECRET = "s3cr3t-value-that-must-not-leak"


def opened(store: Store, values: Mapping[str, str | bytes],
           function: str = "acme/hello") -> dict[str, str]:
    """Values as a node serves them: the sealed ones opened with the store's key."""
    return {k: store.secrets_key.open(v, function, k) if isinstance(v, bytes) else v
            for k, v in values.items()}


def deployed_store(make_store: MakeStore) -> tuple[Store, int]:
    store = make_store()
    t = store.create_tenant("acme")
    add_version(store, t, "hello")
    store.deploy(t, "hello", 1, [("*", "/")], "u")
    return store, t


# --- store and snapshot -----------------------------------------------------------------------


def test_setting_values_is_a_config_revision_carried_by_the_snapshot(
    make_store: MakeStore,
) -> None:
    store, t = deployed_store(make_store)
    change = store.set_config(t, "hello", {"greeting": "hey", "key": SECRET},
                              frozenset({"key"}), "ops")
    assert change.changed and change.revision == 2
    assert [(v.key, v.secret) for v in change.values] == [("greeting", False), ("key", True)]
    snap = open_snapshot(build_snapshot(store, 2, SIGNER), SIGNER.public_key)
    fn = snap.functions["acme/hello"]
    # The secret travels sealed (edge.control.sealing); the fleet's key opens it.
    assert fn.values == {"greeting": "hey"} and set(fn.sealed) == {"key"}
    assert store.secrets_key.open(fn.sealed["key"], "acme/hello", "key") == SECRET
    assert fn.stable.config.config == {"greeting": "hi"}  # the version itself is unchanged
    # The revision before has none: a snapshot of any revision is rebuilt exactly.
    assert open_snapshot(build_snapshot(store, 1, SIGNER), SIGNER.public_key).functions[
        "acme/hello"].values == {}
    # The same values again change nothing; removing one is the next revision.
    assert not store.set_config(t, "hello", {"greeting": "hey"}, frozenset(), "ops").changed
    assert store.set_config(t, "hello", {"greeting": None}, frozenset(), "ops").revision == 3
    assert opened(store, store.config_at(3).functions[0].values) == {"key": SECRET}
    # A deploy after it keeps the values; rollback history ignores config revisions.
    add_version(store, t, "hello")
    store.deploy(t, "hello", 2, None, "u")
    assert opened(store, store.config_at(store.revision()).functions[0].values) == {
        "key": SECRET}
    assert store.rollback(t, "hello", None, "u").state.stable == 1
    # The revision log says what changed, never a secret value.
    logged = [r for r in store.revisions() if r.kind == "config"]
    assert logged[0].change == {"greeting": [None, "hey"], "key": [None, "(secret)"]}
    assert SECRET not in json.dumps([r.change for r in store.revisions()])


def test_a_deploy_changes_values_in_the_same_transaction(make_store: MakeStore) -> None:
    store, t = deployed_store(make_store)
    add_version(store, t, "hello")
    change = store.deploy(t, "hello", 2, None, "u", ({"greeting": "v2"}, frozenset()))
    assert change.changed and change.revision == 3  # 2: the values, 3: the deploy
    published = store.config_at(3).functions[0]
    assert (published.stable.number, published.values) == (2, {"greeting": "v2"})
    # Only values changed: still a change, at the values' revision.
    again = store.deploy(t, "hello", 2, None, "u", ({"greeting": "v3"}, frozenset()))
    assert again.changed and again.revision == 4
    # A refused deploy (taken route) changes no values either: one transaction.
    other = store.create_tenant("other")
    add_version(store, other, "taken")
    store.deploy(other, "taken", 1, [("taken.example", "/")], "o")
    with pytest.raises(store_module.Conflict):
        store.deploy(t, "hello", 1, [("taken.example", "/")], "u", ({"greeting": "no"},
                                                                    frozenset()))
    assert [v.value for v in store.config_values(t, "hello")] == ["v3"]


def test_values_outlive_a_delete_which_they_do_not_undo(make_store: MakeStore) -> None:
    store, t = deployed_store(make_store)
    store.delete_function(t, "hello", "u")
    store.set_config(t, "hello", {"greeting": "kept"}, frozenset(), "u")
    listed = store.functions(t)
    assert [(f.name, f.deleted) for f in listed] == [("hello", True)]
    assert not store.config_at(store.revision()).functions  # still out of snapshots
    store.deploy(t, "hello", 1, [("*", "/")], "u")
    assert store.config_at(store.revision()).functions[0].values == {"greeting": "kept"}


def test_values_are_the_functions_not_another_tenants(make_store: MakeStore) -> None:
    store, _ = deployed_store(make_store)
    other = store.create_tenant("other")
    with pytest.raises(store_module.NotFound):
        store.set_config(other, "hello", {"a": "b"}, frozenset(), "x")
    with pytest.raises(store_module.NotFound):
        store.config_values(other, "hello")


def test_the_number_of_keys_is_bounded_after_the_change(make_store: MakeStore) -> None:
    store, t = deployed_store(make_store)
    store.set_config(t, "hello", {f"k{i}": "v" for i in range(MAX_KEYS)}, frozenset(), "u")
    with pytest.raises(TooManyConfigKeys):
        store.set_config(t, "hello", {"one_more": "v"}, frozenset(), "u")
    assert len(store.config_values(t, "hello")) == MAX_KEYS  # rolled back whole


def test_migration_11_keeps_every_revision_and_admits_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "MIGRATIONS", {n: m for n, m in MIGRATIONS.items()
                                                     if n <= 10})
    with Store(tmp_path) as store:
        t = store.create_tenant("acme")
        add_version(store, t, "hello")
        store.deploy(t, "hello", 1, [("*", "/")], "u")
        before = store.revisions()
        with pytest.raises(sqlite3.OperationalError):  # no function_config table yet
            store.set_config(t, "hello", {"a": "b"}, frozenset(), "u")
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    with Store(tmp_path) as store:
        assert 11 in store.schema_versions() and store.revisions() == before
        assert store.set_config(t, "hello", {"a": "b"}, frozenset(), "u").revision == 2
        assert store.config_at(2).functions[0].values == {"a": "b"}


def _payload(config: Any) -> bytes:
    data = b"\x00asm\x0d\x00\x01\x00"
    manifest = {"function": {"name": "hello"}}
    sha = hashlib.sha256(data).hexdigest()
    v = {"function": "t/hello", "number": 1, "sha256": sha, "size": len(data),
         "manifest": manifest,
         "signature": SIGNER.sign_version("t/hello", 1, sha, len(data), manifest)}
    entry = {"stable": v, "canary": None, "canary_percent": 0, "sticky": "ip"}
    if config is not None:
        entry["config"] = config
    payload = {"format": 1, "revision": 1, "created_unix": 1.0, "routes": [],
               "functions": {"t/hello": entry}}
    return sign_payload(canonical_cbor(payload), SIGNER)


def test_snapshot_config_is_optional_and_strictly_checked() -> None:
    assert open_snapshot(_payload(None), SIGNER.public_key).functions["t/hello"].values == {}
    assert open_snapshot(_payload({"a": "b"}), SIGNER.public_key).functions[
        "t/hello"].values == {"a": "b"}
    # Bytes are a sealed secret: carried as they are, opened (or refused for that function
    # alone) when the node builds what it serves.
    fn = open_snapshot(_payload({"a": "b", "s": b"sealed"}), SIGNER.public_key).functions[
        "t/hello"]
    assert (fn.values, fn.sealed) == ({"a": "b"}, {"s": b"sealed"})
    too_big = b"x" * (MAX_VALUE_BYTES + OVERHEAD_BYTES + 1)
    for bad in ([], {"a": 1}, {1: "a"}, {"bad key": "v"}, {"a\n": "v"},
                {"a": "x" * (MAX_VALUE_BYTES + 1)}, {f"k{i}": "v" for i in range(MAX_KEYS + 1)},
                {"bad key": b"sealed"}, {1: b"sealed"}, {"a": too_big},
                {**{f"k{i}": "v" for i in range(MAX_KEYS)}, "s": b"sealed"}):
        with pytest.raises(SnapshotRejected):
            open_snapshot(_payload(bad), SIGNER.public_key)
    # cbor2 round trip of the envelope stays canonical with the new field
    assert cbor2.loads(_payload({"a": "b"}))["key_id"] == SIGNER.key_id


def test_request_parsing_rules() -> None:
    assert parse_change({"values": {"a": "1", "b": None}, "secret": ["a"]}) == (
        {"a": "1", "b": None}, frozenset({"a"}))
    for body, error in [
        ({}, BadRequest), ({"values": {}}, BadRequest), ({"values": []}, BadRequest),
        ({"values": {"1a": "x"}}, BadConfigKey), ({"values": {"a": 1}}, BadRequest),
        ({"values": {"a": None}, "secret": ["a"]}, BadRequest),
        ({"values": {"a": "x"}, "secret": "a"}, BadRequest),
    ]:
        with pytest.raises(error):
            parse_change(body)
    assert parse_assignments(["a=b=c", "d="]) == {"a": "b=c", "d": ""}
    with pytest.raises(UsageError) as e:
        parse_assignments(["a=1", SECRET])
    assert SECRET not in e.value.message


# --- the API over real sockets ----------------------------------------------------------------


def test_set_list_unset_over_the_api_and_secrets_are_never_shown(start_control: Start) -> None:
    server = start_control()
    c = deployed(server)
    r = c.put("/v1/functions/hello/config",
              json={"values": {"greeting": "hey", "api_key": SECRET}, "secret": ["api_key"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["changed"] and body["revision"] == 2
    assert body["values"] == [{"key": "api_key", "secret": True, "value": None},
                              {"key": "greeting", "secret": False, "value": "hey"}]
    listed = c.get("/v1/functions/hello/config")
    assert listed.status_code == 200 and listed.json()["values"] == body["values"]
    # What the values override: the stable version's edge.toml [config].
    assert listed.json()["edge_toml"] == {"version": 1, "config": {"greeting": "hi"}}
    # The node gets the secret (the function must read it), signed like everything else.
    snap = httpx_snapshot(server)
    fn = snap.functions["default/hello"]
    assert fn.values == {"greeting": "hey"} and SECRET.encode() not in fn.sealed["api_key"]
    assert server.store.secrets_key.open(fn.sealed["api_key"], "default/hello",
                                         "api_key") == SECRET
    # ... and no answer a tenant can get shows it.
    for path in ("/v1/functions/hello/config", "/v1/functions/hello/versions", "/v1/functions",
                 "/v1/status",
                 "/v1/traffic", "/v1/regions", "/openapi.json"):
        answer = c.get(path)
        assert answer.status_code == 200 and SECRET not in answer.text, path
    r = c.put("/v1/functions/hello/config", json={"values": {"greeting": None}})
    assert r.json()["revision"] == 3 and [v["key"] for v in r.json()["values"]] == ["api_key"]
    assert c.put("/v1/functions/hello/config",
                 json={"values": {"greeting": None}}).json()["changed"] is False


def httpx_snapshot(server: ControlServer) -> Any:
    node = server.client(server.node)
    r = node.get("/v1/node/snapshot", params={"after": -1})
    assert r.status_code == 200
    return open_snapshot(r.content, server.signer.public_key)


def test_config_endpoints_check_tokens_scopes_and_tenants(start_control: Start) -> None:
    server = start_control()
    deployed(server)
    path = "/v1/functions/hello/config"
    put = {"values": {"a": "b"}}
    reader = server.client(server.token("default", ("read",)))
    assert reader.get(path).status_code == 200
    r = reader.put(path, json=put)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert server.client(None).get(path).status_code == 401
    assert server.client(server.node).put(path, json=put).status_code == 403
    other = server.client(server.token("other"))
    for method in ("GET", "PUT"):
        r = other.request(method, path, json=put if method == "PUT" else None)
        assert r.status_code == 404 and r.json()["error"] == "not_found", method
    # The other tenant's own function of the same name is its own.
    assert upload(other).status_code == 201
    assert other.put(path, json={"values": {"a": "theirs"}}).status_code == 200
    mine = server.client(server.admin).get(path).json()["values"]
    assert mine == []
    theirs = other.get(path).json()  # uploaded, not deployed: nothing of edge.toml in use
    assert theirs["edge_toml"] is None and theirs["values"][0]["value"] == "theirs"


def test_bad_keys_values_and_bodies_are_typed_400s(start_control: Start) -> None:
    server = start_control()
    c = deployed(server)
    path = "/v1/functions/hello/config"
    cases = [
        ({"values": {"has space": "v"}}, "bad_config_key"),
        ({"values": {"": "v"}}, "bad_config_key"),
        ({"values": {"a": "x" * (MAX_VALUE_BYTES + 1)}}, "config_value_too_large"),
        ({"values": {"a": 5}}, "bad_config_value"),
        ({"values": {"a": "\ud800"}}, "bad_config_value"),
        ({"values": {"a\n": "v"}}, "bad_config_key"),
        ({"values": {f"k{i}": "v" for i in range(MAX_KEYS + 1)}}, "too_many_config_keys"),
        ({"values": "a=b"}, "bad_request"),
        ({"values": {"a": "b"}, "secret": ["c"]}, "bad_request"),
    ]
    for body, reason in cases:  # ASCII JSON: "\ud800" travels as the escape it is
        r = c.put(path, content=json.dumps(body), headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"] == reason, (body, r.text)
    assert c.put(path, content=b"{not json").status_code == 400
    # The same rules for values given with a deploy, and a refused one deploys nothing.
    r = c.post("/v1/functions/hello/deploy",
               json={"version": 1, "config": {"values": {"bad key": "v"}}})
    assert r.status_code == 400 and r.json()["error"] == "bad_config_key"
    r = c.post("/v1/functions/hello/deploy", json={"version": 1, "config": ["a"]})
    assert r.status_code == 400
    assert c.get("/v1/status").json()["revision"] == 1
    assert c.put("/v1/functions/Bad_Name/config", json={"values": {"a": "b"}}).status_code == 400
    assert c.put("/v1/functions/nothere/config", json={"values": {"a": "b"}}).status_code == 404
    assert c.put(path, json={"values": {"a": "x" * MAX_VALUE_BYTES}}).status_code == 200
    assert c.get(path).json()["values"][0]["value"] == "x" * MAX_VALUE_BYTES
    paths = c.get("/openapi.json").json()["paths"]
    assert set(paths["/v1/functions/{name}/config"]) == {"get", "put"}
