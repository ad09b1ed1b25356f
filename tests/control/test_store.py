"""The store: migrations, immutable numbered versions, one revision per change, and the
deploy / canary / promote / rollback rules."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.control import history
from edge.control import store as store_module
from edge.control.errors import Conflict, NotFound
from edge.control.migrations import MIGRATIONS
from edge.control.records import Change
from edge.control.store import Store, hash_token
from edge.errors import BadRequest
from tests.control.conftest import FakeClock, add_version

MakeStore = Callable[..., Store]


def tenant(store: Store, name: str = "acme") -> int:
    return store.create_tenant(name)


def test_migrations_apply_once_and_are_idempotent(make_store: MakeStore, tmp_path: Path) -> None:
    store = make_store()
    assert store.schema_versions() == sorted(MIGRATIONS)
    assert store.migrate() == []
    store.close()
    again = make_store()
    assert again.migrate() == []
    assert again.schema_versions() == sorted(MIGRATIONS)


def test_wal_and_foreign_keys_are_on(make_store: MakeStore, tmp_path: Path) -> None:
    make_store()
    db = sqlite3.connect(tmp_path / "data" / "control.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_tokens_are_stored_hashed_and_scoped(make_store: MakeStore, tmp_path: Path) -> None:
    store = make_store()
    tenant(store)
    token = store.create_token(tenant="acme", kind="api", scopes=["read"], label="ci")
    node = store.create_token(tenant=None, kind="node", label="n")
    raw = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("control.db*"))
    assert token.encode() not in raw and hash_token(token).encode() in raw
    p = store.authenticate(token)
    assert p is not None and p.tenant == "acme" and p.scopes == {"read"} and p.kind == "api"
    n = store.authenticate(node)
    assert n is not None and n.kind == "node" and n.tenant_id is None
    assert store.authenticate(token + "x") is None
    with pytest.raises(BadRequest):
        store.create_token(tenant="acme", kind="api", scopes=["root"], label="x")


def test_versions_are_numbered_per_function_and_immutable(make_store: MakeStore) -> None:
    store = make_store()
    t = tenant(store)
    assert [add_version(store, t, "a") for _ in range(3)] == [1, 2, 3]
    assert add_version(store, t, "b") == 1
    assert [v.number for v in store.versions(t, "a")] == [1, 2, 3]
    db = store._db
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        db.execute("UPDATE versions SET message = 'x'")
    with pytest.raises(sqlite3.DatabaseError, match="never deleted"):
        db.execute("DELETE FROM versions")
    assert len(store.versions(t, "a")) == 3


def test_more_than_100_versions_are_kept(make_store: MakeStore) -> None:
    store = make_store()
    t = tenant(store)
    for i in range(105):
        add_version(store, t, "a", tag=str(i))
    assert [v.number for v in store.versions(t, "a")] == list(range(1, 106))


def test_version_needs_its_blob_first(make_store: MakeStore) -> None:
    store = make_store()
    t = tenant(store)
    with pytest.raises(Conflict):
        store.create_version(t, "a", sha256="0" * 64, size_bytes=1, manifest={}, message="",
                             author="x")


def test_every_change_adds_exactly_one_revision(make_store: MakeStore, clock: FakeClock) -> None:
    store = make_store()
    t = tenant(store)
    v1, v2 = add_version(store, t), add_version(store, t)
    assert store.revision() == 0  # uploads are not changes to what is served
    steps: list[Callable[[], Change]] = [
        lambda: store.deploy(t, "hello", v1, [("example.com", "/")], "u"),
        lambda: store.deploy(t, "hello", v1, [("example.com", "/"), ("a.com", "/x")], "u"),
        lambda: store.set_canary(t, "hello", v2, 10, None, "u"),
        lambda: store.set_canary(t, "hello", v2, 50, "cookie:sid", "u"),
        lambda: store.promote(t, "hello", "u"),
        lambda: store.rollback(t, "hello", None, "u"),
    ]
    for expected, step in enumerate(steps, start=1):
        clock.advance(1)
        change = step()
        assert change.changed and change.revision == expected == store.revision()
    kinds = [r.kind for r in store.revisions()]
    assert kinds == ["deploy", "routes", "canary", "canary", "promote", "rollback"]
    assert [r.number for r in store.revisions()] == list(range(1, 7))


def test_a_no_op_writes_no_revision(make_store: MakeStore) -> None:
    store = make_store()
    t = tenant(store)
    v1 = add_version(store, t)
    store.deploy(t, "hello", v1, [("example.com", "/")], "u")
    change = store.deploy(t, "hello", v1, None, "u")
    assert not change.changed and change.revision == 1 == store.revision()


def test_canary_then_promote(make_store: MakeStore) -> None:
    store = make_store()
    t = tenant(store)
    v1, v2 = add_version(store, t), add_version(store, t)
    with pytest.raises(Conflict, match="not deployed"):
        store.set_canary(t, "hello", v2, 10, None, "u")
    store.deploy(t, "hello", v1, [("example.com", "/")], "u")
    with pytest.raises(Conflict, match="no canary"):
        store.promote(t, "hello", "u")
    with pytest.raises(Conflict, match="already stable"):
        store.set_canary(t, "hello", v1, 10, None, "u")
    with pytest.raises(BadRequest):
        store.set_canary(t, "hello", v2, 101, None, "u")
    with pytest.raises(NotFound):
        store.set_canary(t, "hello", 99, 10, None, "u")
    state = store.set_canary(t, "hello", v2, 25, "cookie:sid", "u").state
    assert (state.stable, state.canary, state.canary_percent, state.sticky) == (1, 2, 25,
                                                                                "cookie:sid")
    state = store.promote(t, "hello", "u").state
    assert (state.stable, state.canary, state.canary_percent) == (2, None, 0)
    assert state.routes == (("example.com", "/"),)
    # Removing a canary: version None.
    v3 = add_version(store, t)
    store.set_canary(t, "hello", v3, 5, None, "u")
    state = store.set_canary(t, "hello", None, 5, None, "u").state
    assert (state.canary, state.canary_percent) == (None, 0)


def test_deploy_clears_the_canary(make_store: MakeStore) -> None:
    store = make_store()
    t = tenant(store)
    v1, v2, v3 = (add_version(store, t) for _ in range(3))
    store.deploy(t, "hello", v1, None, "u")
    store.set_canary(t, "hello", v2, 50, None, "u")
    state = store.deploy(t, "hello", v3, None, "u").state
    assert (state.stable, state.canary) == (3, None)


def test_rollback_goes_to_the_previous_stable(make_store: MakeStore) -> None:
    store = make_store()
    t = tenant(store)
    for _ in range(3):
        add_version(store, t)
    with pytest.raises(Conflict):
        store.rollback(t, "hello", None, "u")
    for v in (1, 2, 3):
        store.deploy(t, "hello", v, None, "u")
    assert store.rollback(t, "hello", None, "u").state.stable == 2
    assert store.rollback(t, "hello", None, "u").state.stable == 1
    with pytest.raises(Conflict, match="no earlier"):
        store.rollback(t, "hello", None, "u")
    store.deploy(t, "hello", 3, None, "u")
    assert store.rollback(t, "hello", 2, "u").state.stable == 2
    with pytest.raises(Conflict, match="already stable"):
        store.rollback(t, "hello", 2, "u")
    with pytest.raises(NotFound):
        store.rollback(t, "hello", 7, "u")


def test_rollback_after_redeploying_an_old_version_returns_to_the_newer_one() -> None:
    assert history.previous_stable([("deploy", 1), ("deploy", 2), ("deploy", 3),
                                    ("deploy", 1)]) == 3
    assert history.previous_stable([("deploy", 1), ("canary", 2), ("promote", 2)]) == 1
    assert history.previous_stable([("deploy", 1), ("deploy", 2), ("rollback", 1)]) is None
    assert history.stable_stack([("deploy", 1), ("deploy", 1), ("routes", 1)]) == [1]


def test_a_delete_starts_the_rollback_history_afresh() -> None:
    events: list[tuple[str, int | None]] = [("deploy", 1), ("deploy", 2), ("delete", None),
                                            ("deploy", 3)]
    assert history.stable_stack(events) == [3] and history.previous_stable(events) is None
    assert history.previous_stable([*events, ("deploy", 4)]) == 3


def test_delete_is_one_revision_and_the_config_has_the_function_no_more(
    make_store: MakeStore,
) -> None:
    store = make_store()
    t = tenant(store)
    for name in ("a", "b"):
        add_version(store, t, name)
        store.deploy(t, name, 1, [("*", f"/{name}")], "u")
    gone = store.delete_function(t, "a", "ops")
    assert (gone.revision, gone.changed) == (3, True)
    assert gone.removed is not None and gone.removed.routes == (("*", "/a"),)
    assert store.deployment(t, "a") is None and store.function_names(t) == ["a", "b"]
    assert [f.state.function for f in store.config_at(3).functions] == ["acme/b"]
    assert [f.state.function for f in store.config_at(2).functions] == ["acme/a", "acme/b"]
    row = store.revisions()[-1]
    assert (row.kind, row.author, row.change["stable"], row.change["routes"]) == (
        "delete", "ops", [1, None], [["*/a"], []])
    again = store.delete_function(t, "a", "ops")
    assert (again.revision, again.changed, again.removed) == (3, False, None)
    with pytest.raises(NotFound):
        store.delete_function(t, "nothere", "ops")
    with pytest.raises(NotFound):  # another tenant's function is not found either
        store.delete_function(store.create_tenant("other"), "b", "ops")
    store.deploy(t, "a", 1, [("*", "/a")], "u")
    assert [f.state.function for f in store.config_at(store.revision()).functions] == [
        "acme/a", "acme/b"]


def test_functions_lists_a_tenants_functions_with_their_deployment_and_times(
    make_store: MakeStore, clock: FakeClock
) -> None:
    store = make_store()
    t, other = tenant(store), tenant(store, "other")
    start = clock()
    add_version(store, t, "web")
    clock.advance(10)
    add_version(store, t, "web")
    clock.advance(5)
    store.deploy(t, "web", 1, [("*", "/")], "u")
    store.set_canary(t, "web", 2, 25, None, "u")
    clock.advance(5)
    add_version(store, t, "draft")
    add_version(store, other, "theirs")
    listed = {f.name: f for f in store.functions(t)}
    assert list(listed) == ["draft", "web"]  # by name; the other tenant's is not there
    web, draft = listed["web"], listed["draft"]
    assert web.deployment is not None
    assert (web.deployment.stable, web.deployment.canary, web.deployment.canary_percent,
            web.deployment.routes) == (1, 2, 25, (("*", "/"),))
    assert (web.version_count, web.created_unix, web.updated_unix, web.deleted) == (
        2, start, start + 15, False)
    assert (draft.deployment, draft.version_count, draft.created_unix, draft.updated_unix,
            draft.deleted) == (None, 1, start + 20, start + 20, False)

    clock.advance(5)
    store.delete_function(t, "web", "u")
    web = store.functions(t)[1]
    assert (web.deployment, web.deleted, web.updated_unix) == (None, True, start + 25)
    clock.advance(5)
    store.deploy(t, "web", 2, [("*", "/")], "u")  # deployed again: not deleted any more
    web = store.functions(t)[1]
    assert web.deployment is not None and web.deployment.stable == 2
    assert (web.deleted, web.updated_unix, web.created_unix) == (False, start + 30, start)
    assert [f.name for f in store.functions(other)] == ["theirs"]


def test_migration_10_keeps_every_revision_and_admits_deletes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "MIGRATIONS", {n: m for n, m in MIGRATIONS.items()
                                                     if n <= 9})
    with Store(tmp_path) as store:
        t = tenant(store)
        add_version(store, t, "hello")
        store.deploy(t, "hello", 1, [("*", "/")], "u")
        store.report_node("n1", "eu", 1, True, None, url="http://127.0.0.1:1")
        before = store.revisions()
        with pytest.raises(sqlite3.IntegrityError):
            store.delete_function(t, "hello", "u")
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    with Store(tmp_path) as store:
        assert 10 in store.schema_versions() and store.revisions() == before
        assert store.delete_function(t, "hello", "u").revision == 3
        assert store.config_at(2).functions and not store.config_at(3).functions


def test_rollback_drops_a_canary(make_store: MakeStore) -> None:
    store = make_store()
    t = tenant(store)
    v1, v2 = add_version(store, t), add_version(store, t)
    store.deploy(t, "hello", v1, None, "u")
    store.set_canary(t, "hello", v2, 50, None, "u")
    state = store.rollback(t, "hello", v1, "u").state
    assert (state.stable, state.canary) == (1, None)


def test_rollback_during_a_canary_drops_only_the_canary(make_store: MakeStore) -> None:
    """The canary misbehaves, the operator rolls back: stable stays where it was. It used to
    go back to the stable version before it too."""
    store = make_store()
    t = tenant(store)
    v1, v2, v3 = add_version(store, t), add_version(store, t), add_version(store, t)
    store.deploy(t, "hello", v1, None, "u")
    store.deploy(t, "hello", v2, None, "u")
    store.set_canary(t, "hello", v3, 10, None, "u")
    state = store.rollback(t, "hello", None, "u").state
    assert (state.stable, state.canary, state.canary_percent) == (v2, None, 0)
    assert store.rollback(t, "hello", None, "u").state.stable == v1  # then as before
    store.set_canary(t, "hello", v3, 10, None, "u")
    explicit = store.rollback(t, "hello", v2, "u").state  # --to N: to N, canary dropped
    assert (explicit.stable, explicit.canary) == (v2, None)


def test_routes_belong_to_one_tenant_and_one_function(make_store: MakeStore) -> None:
    store = make_store()
    a, b = tenant(store, "a"), tenant(store, "b")
    add_version(store, a, "f")
    add_version(store, a, "g")
    add_version(store, b, "f")
    store.deploy(a, "f", 1, [("example.com", "/")], "u")
    with pytest.raises(Conflict, match="another tenant"):
        store.deploy(b, "f", 1, [("example.com", "/other")], "u")
    with pytest.raises(Conflict, match="already routed"):
        store.deploy(a, "g", 1, [("example.com", "/")], "u")
    store.deploy(a, "g", 1, [("example.com", "/g")], "u")
    assert store.revision() == 2  # the refused changes wrote nothing


def test_other_tenants_functions_are_not_found(make_store: MakeStore) -> None:
    store = make_store()
    a, b = tenant(store, "a"), tenant(store, "b")
    add_version(store, a, "secret")
    with pytest.raises(NotFound):
        store.versions(b, "secret")
    with pytest.raises(NotFound):
        store.deploy(b, "secret", 1, None, "u")


def test_config_at_rebuilds_any_past_revision(make_store: MakeStore, clock: FakeClock) -> None:
    store = make_store()
    t = tenant(store)
    v1, v2 = add_version(store, t, "a"), add_version(store, t, "a")
    add_version(store, t, "b")
    store.deploy(t, "a", v1, [("a.com", "/")], "u")
    store.deploy(t, "b", 1, [("b.com", "/")], "u")
    store.set_canary(t, "a", v2, 30, None, "u")
    assert store.config_at(0).functions == ()
    at1 = store.config_at(1)
    assert [r.state.function for r in at1.functions] == ["acme/a"]
    at3 = store.config_at(3)
    by_name = {r.state.function: r for r in at3.functions}
    assert by_name["acme/a"].canary is not None and by_name["acme/a"].canary.number == 2
    assert by_name["acme/b"].stable.number == 1
    with pytest.raises(NotFound):
        store.config_at(4)


def test_nodes_report(make_store: MakeStore, clock: FakeClock) -> None:
    store = make_store()
    store.report_node("n1", "eu", 3, True, 12.5)
    clock.advance(5)
    store.report_node("n1", "eu", 4, False, None)
    (n,) = store.nodes()
    assert (n.applied_revision, n.healthy, n.convergence_ms, n.last_report_unix) == (
        4, False, 12.5, clock.t)
