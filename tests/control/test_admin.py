"""Tenants and tokens through the admin API and the CLI, against a real control plane on
127.0.0.1: scopes enforced, revocation at once, and other tenants' tokens learn nothing."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from edge.cli import app
from edge.control.sealing import KEY_FILE, SecretsKey, from_text, sealed_key_id
from edge.control.snapshot import open_snapshot
from edge.control.store import DB_NAME, Store, hash_token
from tests.control.conftest import ControlServer, component, manifest
from tests.control.test_api import deployed, upload

Start = Callable[..., ControlServer]


def edge(server: ControlServer, token: str, *args: str) -> Any:
    return CliRunner().invoke(
        app, list(args), env={"EDGE_CONTROL_URL": server.url, "EDGE_TOKEN": token}
    )


def make_token(admin: httpx.Client, tenant: str, *scopes: str, name: str = "") -> dict[str, Any]:
    r = admin.post("/v1/tokens", json={"tenant": tenant, "scopes": list(scopes), "name": name})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body



def test_tenant_list_counts_deployed_functions_apart_from_those_with_versions(
    start_control: Start,
) -> None:
    """A deleted function keeps its versions: it counts among the functions with versions,
    not among the deployed ones, in the API and in `edge tenant list`."""
    server = start_control()
    admin = server.client(server.admin)

    def counts() -> tuple[int, int]:
        [default] = [t for t in admin.get("/v1/tenants").json()["tenants"]
                     if t["name"] == "default"]
        return default["functions"], default["functions_with_versions"]

    assert counts() == (0, 0)
    for name in ("hello", "other", "draft"):
        assert upload(admin, name).status_code == 201
    for name in ("hello", "other"):
        r = admin.post(f"/v1/functions/{name}/deploy",
                       json={"version": 1, "routes": [f"{name}.test/"]})
        assert r.status_code == 200, r.text
    assert counts() == (2, 3)  # draft has a version and was never deployed
    assert admin.delete("/v1/functions/hello").json()["changed"] is True
    assert counts() == (1, 3)
    assert [f["function"] for f in admin.get("/v1/status").json()["functions"]] == [
        "default/other"]

    r = edge(server, server.admin, "tenant", "list", "--json")
    [row] = [t for t in json.loads(r.stdout)["tenants"] if t["name"] == "default"]
    assert (row["functions"], row["functions_with_versions"]) == (1, 3)
    r = edge(server, server.admin, "tenant", "list")
    assert r.exit_code == 0, r.output
    header = next(line for line in r.stdout.splitlines() if "tenant" in line)
    assert "deployed" in header and "with versions" in header
    [line] = [line for line in r.stdout.splitlines() if " default " in line]
    cells = [c.strip() for c in line.strip("│| \n").split("│")]
    assert cells[-3:] == ["1", "3", "1"], r.stdout  # deployed, with versions, tokens
    # Deployed again, it counts again.
    assert admin.post("/v1/functions/hello/deploy",
                      json={"version": 1, "routes": ["hello.test/"]}).status_code == 200
    assert counts() == (2, 3)

def test_admin_creates_tenants_and_scoped_tokens_that_work(start_control: Start) -> None:
    server = start_control()
    admin = server.client(server.admin)
    r = admin.post("/v1/tenants", json={"name": "acme"})
    assert r.status_code == 201 and r.json()["name"] == "acme"
    assert admin.post("/v1/tenants", json={"name": "acme"}).status_code == 409
    assert admin.post("/v1/tenants", json={"name": "Bad/Name"}).status_code == 400
    assert admin.post("/v1/tenants", json={}).status_code == 400
    deploy = make_token(admin, "acme", "deploy", "read", name="ci")
    assert deploy["token"].startswith("edge_") and deploy["scopes"] == ["deploy", "read"]
    assert deploy["name"] == "ci" and deploy["tenant"] == "acme" and not deploy["revoked"]
    # Only the hash is stored: the secret appears in no listing and nowhere in the database.
    listed = admin.get("/v1/tokens", params={"tenant": "acme"}).json()["tokens"]
    assert [t["id"] for t in listed] == [deploy["id"]]
    assert deploy["token"] not in json.dumps(listed)
    data = server.store.data_dir
    db = b"".join(p.read_bytes() for p in data.glob("control.db*"))  # with the WAL
    assert deploy["token"].encode() not in db and hash_token(deploy["token"]).encode() in db
    # The new token deploys in its tenant.
    ci = server.client(deploy["token"])
    assert upload(ci).status_code == 201
    assert ci.post("/v1/functions/hello/deploy", json={"version": 1, "routes": ["acme.test/"]})\
        .status_code == 200
    tenants = {t["name"]: t for t in admin.get("/v1/tenants").json()["tenants"]}
    assert tenants["acme"]["functions"] == 1 and tenants["acme"]["active_tokens"] == 1
    assert set(tenants) == {"acme", "default"}
    # Bad requests are typed 400s, never crashes.
    for bad in ({"tenant": "acme", "scopes": ["root"]}, {"tenant": "acme", "scopes": []},
                {"tenant": "acme", "scopes": "deploy"}, {"scopes": ["read"]},
                {"tenant": "acme", "scopes": ["read"], "name": "x" * 101}):
        assert admin.post("/v1/tokens", json=bad).status_code == 400, bad
    assert admin.post("/v1/tokens", json={"tenant": "nope", "scopes": ["read"]}).status_code \
        == 404
    assert admin.post("/v1/tokens/abc/revoke").status_code == 404
    assert admin.post("/v1/tokens/9999/revoke").status_code == 404


def test_scopes_are_enforced_on_new_tokens(start_control: Start) -> None:
    server = start_control()
    admin = server.client(server.admin)
    admin.post("/v1/tenants", json={"name": "acme"})
    deployer = server.client(make_token(admin, "acme", "deploy")["token"])
    operator = server.client(make_token(admin, "acme", "operate")["token"])
    reader = server.client(make_token(admin, "acme", "read")["token"])
    assert upload(deployer).status_code == 201
    assert deployer.post("/v1/functions/hello/deploy", json={"version": 1}).status_code == 200
    assert upload(deployer, tag="v2").status_code == 201
    # read cannot deploy; deploy cannot operate (canary, rollback, drain); operate cannot deploy.
    assert upload(reader, tag="v3").status_code == 403
    assert reader.post("/v1/functions/hello/deploy", json={"version": 2}).status_code == 403
    assert deployer.post("/v1/functions/hello/rollback", json={}).status_code == 403
    assert deployer.post("/v1/functions/hello/canary",
                         json={"version": 2, "percent": 10}).status_code == 403
    assert deployer.post("/v1/regions/eu-west/drain", json={}).status_code == 403
    assert operator.post("/v1/functions/hello/deploy", json={"version": 2}).status_code == 403
    assert operator.post("/v1/functions/hello/canary",
                         json={"version": 2, "percent": 10}).status_code == 200
    assert reader.get("/v1/functions/hello/versions").status_code == 200
    # No tenant token, whatever its scopes, manages tenants or tokens.
    everything = server.client(make_token(admin, "acme", "deploy", "operate", "read")["token"])
    for client in (deployer, operator, reader, everything, server.client(server.node)):
        assert client.get("/v1/tokens").status_code == 403
        assert client.post("/v1/tenants", json={"name": "mine"}).status_code == 403
        assert client.post("/v1/tokens", json={"tenant": "acme", "scopes": ["admin"]})\
            .status_code == 403
        assert client.post("/v1/tokens/1/revoke").status_code == 403
    assert server.client(None).get("/v1/tenants").status_code == 401
    assert server.client("edge_wrong").get("/v1/tokens").status_code == 401


def test_revoked_tokens_get_401_at_once(start_control: Start) -> None:
    server = start_control()
    admin = server.client(server.admin)
    made = make_token(admin, "default", "read")
    reader = server.client(made["token"])
    assert reader.get("/v1/status").status_code == 200  # now known (and remembered)
    r = admin.post(f"/v1/tokens/{made['id']}/revoke")
    assert r.status_code == 200 and r.json()["revoked"] is True
    first_revoked = r.json()["revoked_unix"]
    r = reader.get("/v1/status")
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    # Revoking again changes nothing; the token stays listed as revoked.
    again = admin.post(f"/v1/tokens/{made['id']}/revoke").json()
    assert again["revoked_unix"] == first_revoked
    listed = {t["id"]: t for t in admin.get("/v1/tokens").json()["tokens"]}
    assert listed[made["id"]]["revoked"] is True
    # A revoked node token cannot follow any more.
    node = admin.post("/v1/tokens", json={"kind": "node", "name": "edge-7"}).json()
    assert node["kind"] == "node" and node["tenant"] is None and node["scopes"] == []
    follower = server.client(node["token"])
    assert follower.get("/v1/node/snapshot", params={"wait_s": 0}).status_code == 200
    admin.post(f"/v1/tokens/{node['id']}/revoke")
    assert follower.get("/v1/node/snapshot", params={"wait_s": 0}).status_code == 401


def test_other_tenants_token_learns_nothing(start_control: Start) -> None:
    server = start_control()
    admin = server.client(server.admin)
    for tenant in ("acme", "globex"):
        admin.post("/v1/tenants", json={"name": tenant})
    acme = server.client(make_token(admin, "acme", "deploy", "operate", "read")["token"])
    globex = server.client(make_token(admin, "globex", "deploy", "operate", "read")["token"])
    assert upload(acme).status_code == 201
    acme.post("/v1/functions/hello/deploy", json={"version": 1, "routes": ["acme.test/"]})
    # acme's function and a function nobody has look exactly alike to globex: 404, same body.
    for path, method, body in (("/v1/functions/{}/versions", "GET", None),
                               ("/v1/functions/{}/rollback", "POST", {}),
                               ("/v1/functions/{}/deploy", "POST", {"version": 1}),
                               ("/v1/functions/{}/canary", "POST", {"version": 1, "percent": 5})):
        theirs = globex.request(method, path.format("hello"), json=body)
        nobody = globex.request(method, path.format("hello2"), json=body)
        assert theirs.status_code == nobody.status_code == 404
        assert theirs.json()["message"].replace("hello", "X") \
            == nobody.json()["message"].replace("hello2", "X")
    assert globex.get("/v1/status").json()["functions"] == []
    # globex uploading "hello" makes its own function; acme's is untouched.
    assert upload(globex, tag="g").status_code == 201
    assert [v["number"] for v in acme.get("/v1/functions/hello/versions").json()["versions"]] \
        == [1]


def test_cli_tenant_and_token_commands(start_control: Start) -> None:
    server = start_control()
    r = edge(server, server.admin, "tenant", "create", "acme")
    assert r.exit_code == 0, r.output
    r = edge(server, server.admin, "tenant", "list")
    assert r.exit_code == 0 and "acme" in r.stdout and "default" in r.stdout
    r = edge(server, server.admin, "token", "create", "--tenant", "acme", "--scope",
             "operate,read", "--name", "ops", "--json")
    assert json.loads(r.stdout)["scopes"] == ["operate", "read"]
    r = edge(server, server.admin, "token", "create", "--tenant", "acme", "--scope", "deploy",
             "--scope", "read", "--name", "ci")
    assert r.exit_code == 0, r.output
    secret = r.stdout.strip()  # stdout is the secret alone
    assert secret.startswith("edge_") and "\n" not in secret
    ci = server.client(secret)
    assert ci.get("/v1/status").status_code == 200
    r = edge(server, server.admin, "token", "list", "--json")
    tokens = json.loads(r.stdout)["tokens"]
    mine = next(t for t in tokens if t["name"] == "ci")
    assert secret not in r.stdout and mine["scopes"] == ["deploy", "read"]
    r = edge(server, server.admin, "token", "list", "--tenant", "acme")
    assert r.exit_code == 0 and "ci" in r.stdout and "default-admin" not in r.stdout
    r = edge(server, server.admin, "token", "revoke", str(mine["id"]))
    assert r.exit_code == 0 and "revoked" in r.stderr
    assert ci.get("/v1/status").status_code == 401
    r = edge(server, server.admin, "token", "create", "--node", "--json")
    assert json.loads(r.stdout)["kind"] == "node"
    # Errors are one line; a tenant token cannot use the admin commands.
    r = edge(server, server.admin, "tenant", "create", "acme")
    assert r.exit_code == 1 and r.stderr.strip() == "error: tenant 'acme' already exists"
    r = edge(server, server.admin, "token", "create", "--tenant", "acme")
    assert r.exit_code == 2
    reader = server.token("acme", ("read",))
    r = edge(server, reader, "tenant", "list")
    assert r.exit_code == 1 and "admin" in r.stderr


def test_migration_6_gives_the_first_token_admin(tmp_path: Path) -> None:
    """A data directory made before migration 6: its first-start token becomes the admin one,
    other tokens do not."""
    data = tmp_path / "old"
    with Store(data) as store:
        store.create_tenant("default")
        first = store.create_token(tenant="default", kind="api", scopes=("deploy", "read"),
                                   label="default-admin")
        other = store.create_token(tenant="default", kind="api", scopes=("read",), label="ci")
        # Undo 6 as it would be on such a directory: scopes as then written, no revocations.
        with store._tx() as db:
            db.execute("UPDATE tokens SET scopes = REPLACE(scopes, 'admin,', '')")
            db.execute("DELETE FROM schema_migrations WHERE version = 6")
            db.execute("ALTER TABLE tokens DROP COLUMN revoked_unix")
    with Store(data) as store:
        assert 6 in store.schema_versions()
        p_first, p_other = store.authenticate(first), store.authenticate(other)
        assert p_first is not None and p_other is not None
        assert "admin" in p_first.scopes and "admin" not in p_other.scopes
        v = store.create_version(1, "hello", sha256=store.blobs.put(component("m")),
                                 size_bytes=len(component("m")), manifest=manifest(),
                                 message="", author="t")
        assert v.number == 1


def test_tokens_can_expire(start_control: Start) -> None:
    """As API tokens do at Fastly (expires_at) and Cloudflare (expires_on): 401 "token
    expired" from then on, cached or not; it stays listed with its expiry."""
    server = start_control()
    admin = server.client(server.admin)
    long = admin.post("/v1/tokens", json={"tenant": "default", "scopes": ["read"],
                                          "expires_in_s": 3600}).json()
    assert long["expires_unix"] - long["created_unix"] == 3600
    short = admin.post("/v1/tokens", json={"tenant": "default", "scopes": ["deploy", "read"],
                                           "name": "short", "expires_in_s": 5}).json()
    for bad in (0, -1, "1h", 10 * 365 * 86_400 + 1):
        r = admin.post("/v1/tokens", json={"kind": "node", "expires_in_s": bad})
        assert r.status_code == 400 and "expires_in_s" in r.json()["message"], (bad, r.text)
    reader, writer = server.client(long["token"]), server.client(short["token"])
    assert reader.get("/v1/status").status_code == 200
    assert writer.get("/v1/status").status_code == 200  # known now, and remembered
    tenants = {t["name"]: t for t in admin.get("/v1/tenants").json()["tenants"]}
    active = tenants["default"]["active_tokens"]
    deadline = time.monotonic() + 30
    while (r := writer.get("/v1/status")).status_code == 200:
        assert time.monotonic() < deadline, "the token never expired"
        time.sleep(0.2)
    assert r.status_code == 401 and r.json() == {"error": "unauthorized",
                                                 "message": "token expired"}
    r = writer.post("/v1/functions/hello/versions", content=component("x"),
                    headers={"edge-metadata": "e30"})
    assert r.status_code == 401 and r.json()["message"] == "token expired"
    assert reader.get("/v1/status").status_code == 200
    listed = {t["name"]: t for t in admin.get("/v1/tokens").json()["tokens"]}
    assert listed["short"]["expires_unix"] == short["expires_unix"]
    assert not listed["short"]["revoked"]
    tenants = {t["name"]: t for t in admin.get("/v1/tenants").json()["tenants"]}
    assert tenants["default"]["active_tokens"] == active - 1


def test_cli_token_create_expires_in(start_control: Start) -> None:
    server = start_control()
    r = edge(server, server.admin, "token", "create", "--tenant", "default", "--scope", "read",
             "--expires-in", "90d", "--json")
    made = json.loads(r.stdout)
    assert made["expires_unix"] - made["created_unix"] == 90 * 86_400
    r = edge(server, server.admin, "token", "create", "--tenant", "default", "--scope", "read",
             "--expires-in", "90d")
    assert r.exit_code == 0 and ", expires 20" in r.stderr
    r = edge(server, server.admin, "token", "list")
    assert "expires" in r.stdout
    r = edge(server, server.admin, "token", "create", "--tenant", "default", "--scope", "read",
             "--expires-in", "soon")
    assert r.exit_code == 2 and "--expires-in: not a duration" in r.stderr


def test_migration_9_keeps_tokens_working_and_never_expiring(tmp_path: Path) -> None:
    data = tmp_path / "old"
    with Store(data) as store:
        store.create_tenant("default")
        secret = store.create_token(tenant="default", kind="api", scopes=("read",), label="ci")
        with store._tx() as db:  # undo 9 as it would be on such a directory
            db.execute("DELETE FROM schema_migrations WHERE version = 9")
            db.execute("ALTER TABLE tokens DROP COLUMN expires_unix")
    with Store(data) as store:
        assert 9 in store.schema_versions()
        p = store.authenticate(secret)
        assert p is not None and p.expires_unix is None and not p.expired(1e12)
        assert store.tokens()[0].expires_unix is None


def test_the_last_admin_token_cannot_be_revoked(start_control: Start) -> None:
    """Nothing can make an admin token but an admin token: revoking the last one would lock
    the operator out of tenants and tokens for good."""
    server = start_control()
    admin = server.client(server.admin)
    (first,) = [t for t in admin.get("/v1/tokens").json()["tokens"] if t["name"] ==
                "default-admin"]
    r = admin.post(f"/v1/tokens/{first['id']}/revoke")
    assert r.status_code == 409 and "last admin token" in r.json()["message"], r.text
    assert admin.get("/v1/tokens").status_code == 200  # still in force
    second = make_token(admin, "default", "admin", name="second")
    assert admin.post(f"/v1/tokens/{first['id']}/revoke").json()["revoked"] is True
    assert admin.get("/v1/tokens").status_code == 401
    successor = server.client(second["token"])
    assert successor.post(f"/v1/tokens/{second['id']}/revoke").status_code == 409
    assert successor.get("/v1/tokens").status_code == 200


# --- the secrets key's online rotation --------------------------------------------------------


def sealed_ids(data_dir: Path) -> set[str]:
    """The key ids every secret kept in a control plane's database (current values and the
    revision log's) is sealed under."""
    with contextlib.closing(sqlite3.connect(data_dir / DB_NAME)) as db:
        texts = [r[0] for r in db.execute("SELECT value FROM function_config WHERE secret = 1")]
        for (state_json,) in db.execute("SELECT state FROM revisions WHERE kind = 'config'"):
            state = json.loads(state_json)
            texts += [state["values"][k] for k in state["secret"]]
    return {sealed_key_id(from_text(t)) for t in texts}


def test_the_key_rotates_online_and_later_writes_seal_under_the_new_key(
    start_control: Start, tmp_path: Path
) -> None:
    server = start_control()
    c = deployed(server)
    key_file = server.store.data_dir / KEY_FILE
    old = SecretsKey.load(key_file)
    for value in ("one", "two"):  # the revision log keeps the first too
        r = c.put("/v1/functions/hello/config", json={"values": {"api_key": value},
                                                       "secret": ["api_key"]})
        assert r.status_code == 200, r.text
    assert sealed_ids(server.store.data_dir) == {old.key_id}
    new_file = tmp_path / "keys" / "new.key"  # made, 0600, with its directory

    r = c.post("/v1/secrets-key/rotate", json={"new_key_file": str(new_file)})
    assert r.status_code == 200, r.text
    body = r.json()
    new = SecretsKey.load(new_file)
    assert stat.S_IMODE(new_file.stat().st_mode) == 0o600
    assert body == {**body, "old_key_id": old.key_id, "new_key_id": new.key_id,
                    "functions": ["default/hello"], "values": 3, "revisions": [4],
                    "key_file": str(key_file), "previous_key_file": f"{key_file}.previous"}
    # Nothing is left under the old key, and the revision reached the feed nodes wait on.
    assert sealed_ids(server.store.data_dir) == {new.key_id}
    assert c.get("/v1/status").json()["revision"] == 4
    snap = open_snapshot(c.get("/v1/node/snapshot", params={"after": 3, "wait_s": 0},
                               headers={"authorization": f"Bearer {server.node}"}).content,
                         server.signer.public_key)
    assert new.open(snap.functions["default/hello"].sealed["api_key"], "default/hello",
                    "api_key") == "two"
    # The key file holds the new key (a restart keeps it), the old one is kept beside it.
    assert SecretsKey.load(key_file).key_id == new.key_id
    assert SecretsKey.load(Path(body["previous_key_file"])).key_id == old.key_id
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # A write right after is sealed under the new key.
    r = c.put("/v1/functions/hello/config", json={"values": {"api_key": "three"},
                                                   "secret": ["api_key"]})
    assert r.status_code == 200, r.text
    assert sealed_ids(server.store.data_dir) == {new.key_id}
    snap = open_snapshot(c.get("/v1/node/snapshot", params={"after": 4, "wait_s": 0},
                               headers={"authorization": f"Bearer {server.node}"}).content,
                         server.signer.public_key)
    assert new.open(snap.functions["default/hello"].sealed["api_key"], "default/hello",
                    "api_key") == "three"
    # The key file now holds the current key: refused as such.
    r = c.post("/v1/secrets-key/rotate", json={"new_key_file": str(key_file)})
    assert r.status_code == 409 and r.json()["error"] == "secrets_key_in_use", r.text


def test_config_writes_racing_an_online_rotation_all_end_under_the_new_key(
    start_control: Start, tmp_path: Path
) -> None:
    """Each write comes wholly before the rotation (and is sealed again by it) or wholly after
    (under the new key): none is left under the old key, none is lost."""
    server = start_control()
    deployed(server)
    writes = 40

    def write(i: int) -> int:
        with httpx.Client(base_url=server.url, timeout=30,
                          headers={"authorization": f"Bearer {server.admin}"}) as w:
            r = w.put("/v1/functions/hello/config",
                      json={"values": {f"k{i}": f"v{i}"}, "secret": [f"k{i}"]})
            assert r.status_code == 200, r.text
            return int(r.json()["revision"])

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(write, i) for i in range(writes)]
        r = server.client(server.admin).post(
            "/v1/secrets-key/rotate", json={"new_key_file": str(tmp_path / "new.key")})
        assert r.status_code == 200, r.text
        [f.result() for f in futures]
    new = SecretsKey.load(tmp_path / "new.key")
    assert sealed_ids(server.store.data_dir) == {new.key_id}
    values = {v.key: v.value for v in server.store.config_values(1, "hello")}
    assert {k: new.open(from_text(v), "default/hello", k) for k, v in values.items()} == {
        f"k{i}": f"v{i}" for i in range(writes)}


def test_a_key_file_the_rotation_could_not_write_is_a_500_that_says_what_to_copy(
    start_control: Start, tmp_path: Path
) -> None:
    server = start_control()
    c = deployed(server)
    assert c.put("/v1/functions/hello/config", json={"values": {"api_key": "x"},
                                                      "secret": ["api_key"]}).status_code == 200
    key_file = server.store.data_dir / KEY_FILE
    old = SecretsKey.load(key_file)
    # Where the old key is to be kept is a directory: writing it fails after the commit, even
    # for root (which os.access, checked before the commit, lets through anywhere).
    previous = Path(f"{key_file}.previous")
    previous.mkdir()
    new_file = tmp_path / "new.key"
    r = c.post("/v1/secrets-key/rotate", json={"new_key_file": str(new_file)})
    assert (r.status_code, r.json()["error"]) == (500, "key_file_not_saved"), r.text
    new = SecretsKey.load(new_file)
    message = r.json()["message"]
    assert f"every secret is sealed under key {new.key_id} now" in message
    assert str(previous) in message and f"Copy {new_file} to {key_file}" in message
    # The commit stands: sealed under the new key, which this control plane now seals with,
    # and the key file it could write holds the new key.
    assert sealed_ids(server.store.data_dir) == {new.key_id} != {old.key_id}
    assert SecretsKey.load(key_file).key_id == new.key_id
    assert c.put("/v1/functions/hello/config", json={"values": {"api_key": "y"},
                                                      "secret": ["api_key"]}).status_code == 200
    assert sealed_ids(server.store.data_dir) == {new.key_id}


def test_online_rotation_refusals_change_nothing(start_control: Start, tmp_path: Path) -> None:
    server = start_control()
    c = deployed(server)
    assert c.put("/v1/functions/hello/config", json={"values": {"api_key": "x"},
                                                      "secret": ["api_key"]}).status_code == 200
    key_file = server.store.data_dir / KEY_FILE
    before = (key_file.read_bytes(), c.get("/v1/status").json()["revision"])
    not_a_key = tmp_path / "not.key"
    not_a_key.write_text("not a key\n")
    tenant = server.client(server.token("acme", ("deploy", "operate", "read")))
    new_file = str(tmp_path / "new.key")
    cases: list[tuple[httpx.Client, dict[str, Any], int, str]] = [
        (server.client("nope"), {"new_key_file": new_file}, 401, "unauthorized"),
        (server.client(None), {"new_key_file": new_file}, 401, "unauthorized"),
        (tenant, {"new_key_file": new_file}, 403, "forbidden"),
        (c, {"new_key_file": str(key_file)}, 409, "secrets_key_in_use"),
        (c, {"new_key_file": str(not_a_key)}, 400, "bad_secrets_key"),
        (c, {"new_key_file": "new.key"}, 400, "bad_secrets_key"),  # relative: whose cwd?
        (c, {"new_key_file": str(tmp_path)}, 400, "bad_secrets_key"),  # a directory
        (c, {"new_key_file": f"{key_file}.previous"}, 400, "bad_secrets_key"),
        (c, {"new_key_file": 7}, 400, "bad_request"),
        (c, {}, 400, "bad_request"),
    ]
    for client, body, status, reason in cases:
        r = client.post("/v1/secrets-key/rotate", json=body)
        assert (r.status_code, r.json()["error"]) == (status, reason), (body, r.text)
    assert (key_file.read_bytes(), c.get("/v1/status").json()["revision"]) == before
    assert not (tmp_path / "new.key").exists() and not Path(f"{key_file}.previous").exists()
    assert sealed_ids(server.store.data_dir) == {SecretsKey.load(key_file).key_id}
    assert not_a_key.read_text() == "not a key\n"
    # A current value no key opens (changed in the file): 409, and nothing changes either.
    with contextlib.closing(sqlite3.connect(server.store.data_dir / DB_NAME)) as db, db:
        db.execute("UPDATE function_config SET value = 'sealed:1:AAAA' WHERE secret = 1")
    r = c.post("/v1/secrets-key/rotate", json={"new_key_file": new_file})
    assert (r.status_code, r.json()["error"]) == (409, "conflict"), r.text
    assert "nothing changed" in r.json()["message"] and "api_key" in r.json()["message"]
    assert (key_file.read_bytes(), c.get("/v1/status").json()["revision"]) == before
    assert not Path(f"{key_file}.previous").exists()
    assert server.store.secrets_key.key_id == SecretsKey.load(key_file).key_id


def test_cli_rotate_secrets_key_online(start_control: Start, tmp_path: Path) -> None:
    server = start_control()
    c = deployed(server)
    assert c.put("/v1/functions/hello/config", json={"values": {"api_key": "x"},
                                                      "secret": ["api_key"]}).status_code == 200
    new_file = tmp_path / "new.key"
    r = edge(server, server.admin, "rotate-secrets-key", "--online", "--new-key", str(new_file),
             "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["new_key_id"] == SecretsKey.load(new_file).key_id
    assert result["revisions"] == [3] and result["functions"] == ["default/hello"]
    r = edge(server, server.admin, "rotate-secrets-key", "--online", "--new-key",
             str(tmp_path / "newer.key"))
    assert r.exit_code == 0, r.output
    assert "re-sealed 3 secret value(s) of 1 function(s)" in r.stdout  # 2 in the log
    assert "(last revision 4)" in r.stdout and "over secrets_key_file" in r.stdout
    # Refusals: the current key (typed, from the server), --data with --online, a bad token.
    r = edge(server, server.admin, "rotate-secrets-key", "--online", "--new-key",
             str(tmp_path / "newer.key"), "--json")
    assert r.exit_code != 0 and "secrets_key_in_use" in r.output
    r = edge(server, server.admin, "rotate-secrets-key", "--online", "--new-key",
             str(new_file), "--data", str(tmp_path))
    assert r.exit_code != 0 and "--online" in r.output
    r = edge(server, "nope", "rotate-secrets-key", "--online", "--new-key", str(new_file))
    assert r.exit_code != 0 and "unknown token" in r.output
