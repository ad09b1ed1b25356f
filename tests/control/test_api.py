"""The HTTP API over real sockets (Hypercorn on 127.0.0.1): auth matrix, the deploy flow,
node endpoints and the long poll."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from edge.control import bodies
from edge.control.api import ControlSettings
from edge.control.snapshot import open_snapshot, verify_blob
from edge.control.wire import encode_metadata
from tests.control.conftest import ControlServer, component, manifest

Start = Callable[..., ControlServer]


def upload(c: httpx.Client, name: str = "hello", tag: str = "a") -> httpx.Response:
    return c.post(
        f"/v1/functions/{name}/versions",
        content=component(tag),
        headers={"edge-metadata": encode_metadata(manifest(name), f"msg {tag}")},
    )


def deployed(server: ControlServer, routes: list[str] | None = None) -> httpx.Client:
    c = server.client(server.admin)
    assert upload(c).status_code == 201
    r = c.post("/v1/functions/hello/deploy",
               json={"version": 1, "routes": routes or ["example.com/"]})
    assert r.status_code == 200, r.text
    return c


ENDPOINTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/v1/functions/hello/versions", {}),
    ("POST", "/v1/functions/hello/deploy", {"json": {"version": 1}}),
    ("POST", "/v1/functions/hello/canary", {"json": {"version": 1, "percent": 5}}),
    ("POST", "/v1/functions/hello/promote", {"json": {}}),
    ("POST", "/v1/functions/hello/rollback", {"json": {}}),
    ("DELETE", "/v1/functions/hello", {}),
    ("GET", "/v1/status", {}),
    ("GET", "/v1/node/snapshot?wait_s=0", {}),
    ("POST", "/v1/node/report", {"json": {}}),
    ("GET", "/v1/blobs/" + "0" * 64, {}),
    ("GET", "/v1/public-key", {}),
    ("GET", "/openapi.json", {}),
    ("GET", "/v1/regions", {}),
    ("PUT", "/v1/regions/eu-west", {"json": {"latitude": 53.35, "longitude": -6.26}}),
    ("POST", "/v1/regions/eu-west/drain", {"json": {"over_s": 60}}),
    ("GET", "/v1/traffic", {}),
    ("POST", "/v1/node/traffic", {"json": {}}),
    ("DELETE", "/v1/nodes/eu-1", {}),
    ("GET", "/v1/functions", {}),
    ("POST", "/v1/secrets-key/rotate", {"json": {"new_key_file": "/nonexistent/new.key"}}),
]


@pytest.mark.parametrize(("method", "path", "kw"), ENDPOINTS)
def test_missing_or_wrong_token_is_401(
    start_control: Start, method: str, path: str, kw: dict[str, Any]
) -> None:
    server = start_control()
    for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": "Basic abc"},
                    {"authorization": "Bearer"}):
        r = httpx.request(method, server.url + path, headers=headers, **kw)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"


def test_other_tenants_function_is_404_like_a_missing_one(start_control: Start) -> None:
    server = start_control()
    deployed(server)
    other = server.client(server.token("other"))
    for method, path, kw in ENDPOINTS[:6]:
        r = other.request(method, path, **kw)
        assert r.status_code == 404, (path, r.text)
        missing = other.request(method, path.replace("hello", "nothere"), **kw)
        assert missing.status_code == 404
        assert r.json()["message"] == missing.json()["message"].replace("nothere", "hello")
    # Its own function of the same name is its own business.
    assert upload(other).status_code == 201
    assert other.get("/v1/functions/hello/versions").json()["versions"][0]["function"] == (
        "other/hello")


def test_scopes_are_enforced_with_403(start_control: Start) -> None:
    server = start_control()
    deployed(server)
    read = server.client(server.token("default", ("read",)))
    operate = server.client(server.token("default", ("operate",)))
    deploy = server.client(server.token("default", ("deploy",)))
    node = server.client(server.node)
    assert read.get("/v1/functions/hello/versions").status_code == 200
    assert read.get("/v1/status").status_code == 200
    assert upload(read).status_code == 403
    assert read.post("/v1/functions/hello/deploy", json={"version": 1}).status_code == 403
    assert read.post("/v1/functions/hello/promote").status_code == 403
    assert operate.post("/v1/functions/hello/deploy", json={"version": 1}).status_code == 403
    assert operate.get("/v1/status").status_code == 403
    assert upload(deploy).status_code == 201
    assert deploy.post("/v1/functions/hello/canary",
                       json={"version": 2, "percent": 5}).status_code == 403
    assert operate.post("/v1/functions/hello/canary",
                        json={"version": 2, "percent": 5}).status_code == 200
    # Node tokens reach only node endpoints, and tenant tokens never reach them.
    assert node.get("/v1/status").status_code == 403
    assert node.get("/v1/functions/hello/versions").status_code == 403
    admin = server.client(server.admin)
    assert admin.get("/v1/node/snapshot?wait_s=0").status_code == 403
    assert admin.post("/v1/node/report", json={}).status_code == 403
    r = read.post("/v1/functions/hello/promote")
    assert r.json() == {"error": "forbidden", "message": "this token lacks the 'operate' scope"}
    # Regions: operators change them, readers and nodes (and the DNS server) list them.
    where = {"latitude": 53.35, "longitude": -6.26}
    assert read.put("/v1/regions/eu-west", json=where).status_code == 403
    assert deploy.put("/v1/regions/eu-west", json=where).status_code == 403
    assert node.put("/v1/regions/eu-west", json=where).status_code == 403
    assert operate.put("/v1/regions/eu-west", json=where).status_code == 200
    assert read.post("/v1/regions/eu-west/drain", json={}).status_code == 403
    assert node.post("/v1/regions/eu-west/drain", json={}).status_code == 403
    assert operate.post("/v1/regions/eu-west/drain", json={}).status_code == 200
    assert {read.get("/v1/regions").status_code, node.get("/v1/regions").status_code} == {200}
    assert deploy.get("/v1/regions").status_code == 403


def test_deploy_flow_and_snapshot_for_nodes(start_control: Start) -> None:
    server = start_control()
    admin = deployed(server, ["Example.com:443/app/", "*/"])
    assert upload(admin, tag="b").json()["number"] == 2
    r = admin.post("/v1/functions/hello/canary",
                   json={"version": 2, "percent": 10, "sticky": "cookie:sid"})
    assert r.json()["revision"] == 2
    versions = admin.get("/v1/functions/hello/versions").json()
    assert [v["number"] for v in versions["versions"]] == [1, 2]
    assert versions["deployment"] == {
        "function": "default/hello", "stable": 1, "canary": 2, "canary_percent": 10,
        "sticky": "cookie:sid", "routes": ["*/", "example.com/app"]}
    assert admin.post("/v1/functions/hello/promote").json()["deployment"]["stable"] == 2
    assert admin.post("/v1/functions/hello/rollback", json={}).json()["deployment"][
        "stable"] == 1
    assert admin.post("/v1/functions/hello/rollback", json={"to": 2}).json()["revision"] == 5

    node = server.client(server.node)
    key = bytes.fromhex(node.get("/v1/public-key").json()["public_key"])
    r = node.get("/v1/node/snapshot", params={"after": 0})
    assert r.headers["content-type"] == "application/cbor" and r.headers["edge-revision"] == "5"
    snap = open_snapshot(r.content, key)
    stable = snap.functions["default/hello"].stable
    assert stable.number == 2
    blob = node.get(f"/v1/blobs/{stable.sha256}")
    verify_blob(stable, blob.content)
    assert hashlib.sha256(blob.content).hexdigest() == stable.sha256
    assert node.get("/v1/blobs/" + "f" * 64).status_code == 404
    assert node.get("/v1/blobs/../../etc").status_code == 404

    assert node.post("/v1/node/report", json={"node_id": "n1", "region": "eu",
                                               "revision": 5, "healthy": True,
                                               "convergence_ms": 42}).status_code == 200
    status = admin.get("/v1/status").json()
    assert status["revision"] == 5
    (n,) = status["nodes"]
    assert (n["id"], n["applied_revision"], n["current"], n["convergence_ms"]) == (
        "n1", 5, True, 42.0)
    assert status["regions"]["eu"]["current"] == 1
    assert status["functions"][0]["stable"] == 2


def test_delete_takes_a_function_out_of_snapshots_and_keeps_its_versions(
    start_control: Start,
) -> None:
    server = start_control()
    admin = deployed(server, ["example.com/", "*/api"])
    assert upload(admin, tag="b").status_code == 201
    admin.post("/v1/functions/hello/canary", json={"version": 2, "percent": 10})
    read = server.client(server.token("default", ("read",)))
    operate = server.client(server.token("default", ("operate",)))
    r = read.delete("/v1/functions/hello")
    assert r.status_code == 403 and r.json()["message"] == "this token lacks the 'deploy' scope"
    assert operate.delete("/v1/functions/hello").status_code == 403
    assert admin.delete("/v1/functions/nothere").json() == {
        "error": "not_found", "message": "no function 'nothere'"}
    assert admin.delete("/v1/functions/Bad_Name").status_code == 400

    r = admin.delete("/v1/functions/hello")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "revision": 3, "changed": True, "function": "hello",
        "deleted": {"function": "default/hello", "stable": 1, "canary": 2,
                    "canary_percent": 10, "sticky": "ip", "routes": ["*/api", "example.com/"]}}
    node = server.client(server.node)
    key = bytes.fromhex(node.get("/v1/public-key").json()["public_key"])
    r = node.get("/v1/node/snapshot", params={"after": 2, "wait_s": 5})
    snap = open_snapshot(r.content, key)
    assert (snap.revision, snap.functions, snap.routes) == (3, {}, ())
    assert admin.get("/v1/status").json()["functions"] == []
    versions = admin.get("/v1/functions/hello/versions").json()
    assert [v["number"] for v in versions["versions"]] == [1, 2]
    assert versions["deployment"] is None
    # Nothing deployed to roll back or promote; deleting again changes nothing.
    assert admin.post("/v1/functions/hello/rollback", json={}).status_code == 409
    assert admin.delete("/v1/functions/hello").json() == {
        "revision": 3, "changed": False, "function": "hello", "deleted": None}
    # Its routes are free again, for another function too.
    other = admin.post("/v1/functions/other/versions", content=component("o"),
                       headers={"edge-metadata": encode_metadata(manifest("other"), "")})
    assert other.status_code == 201
    r = admin.post("/v1/functions/other/deploy", json={"version": 1, "routes": ["*/api"]})
    assert r.status_code == 200, r.text
    # A deploy of the same name makes it live again, numbering on; its history starts afresh.
    assert upload(admin, tag="c").json()["number"] == 3
    r = admin.post("/v1/functions/hello/deploy", json={"version": 3, "routes": ["example.com/"]})
    assert r.json()["deployment"] == {
        "function": "default/hello", "stable": 3, "canary": None, "canary_percent": 0,
        "sticky": "ip", "routes": ["example.com/"]}
    r = admin.post("/v1/functions/hello/rollback", json={})
    assert r.status_code == 409 and "no earlier stable version" in r.json()["message"]
    assert admin.post("/v1/functions/hello/rollback", json={"to": 1}).json()["deployment"][
        "stable"] == 1
    r = node.get("/v1/node/snapshot", params={"after": 0})
    snap = open_snapshot(r.content, key)
    assert snap.functions["default/hello"].stable.number == 1
    assert {(rt.host, rt.path_prefix, rt.function) for rt in snap.routes} == {
        ("example.com", "/", "default/hello"), ("*", "/api", "default/other")}


def test_functions_lists_this_tenants_own_with_canary_and_hides_deleted_ones(
    start_control: Start,
) -> None:
    server = start_control()
    admin = deployed(server, ["example.com/", "*/api"])
    assert upload(admin, tag="b").status_code == 201
    assert admin.post("/v1/functions/hello/canary",
                      json={"version": 2, "percent": 10}).status_code == 200
    assert upload(admin, "draft").status_code == 201  # never deployed
    assert upload(admin, "gone").status_code == 201
    assert admin.post("/v1/functions/gone/deploy",
                      json={"version": 1, "routes": ["*/gone"]}).status_code == 200
    assert admin.delete("/v1/functions/gone").json()["changed"]
    theirs = server.client(server.token("other"))
    assert upload(theirs, "secret").status_code == 201
    assert theirs.post("/v1/functions/secret/deploy",
                       json={"version": 1, "routes": ["other.example/"]}).status_code == 200

    read = server.client(server.token("default", ("read",)))  # read scope is enough
    r = read.get("/v1/functions")
    assert r.status_code == 200, r.text
    listed = r.json()["functions"]
    assert [f["name"] for f in listed] == ["draft", "hello"]
    draft, hello = listed
    changed = {row.function: row.created_unix for row in server.store.revisions()}
    assert {k: hello[k] for k in hello if not k.endswith("_unix")} == {
        "name": "hello", "stable": 1, "canary": 2, "canary_percent": 10, "sticky": "ip",
        "routes": ["*/api", "example.com/"], "version_count": 2, "deleted": False}
    assert hello["created_unix"] < hello["updated_unix"] == changed["default/hello"]
    assert {k: draft[k] for k in draft if not k.endswith("_unix")} == {
        "name": "draft", "stable": None, "canary": None, "canary_percent": 0, "sticky": None,
        "routes": [], "version_count": 1, "deleted": False}
    [first] = read.get("/v1/functions/draft/versions").json()["versions"]
    assert draft["created_unix"] <= draft["updated_unix"] == first["created_unix"]

    every = read.get("/v1/functions", params={"deleted": "1"}).json()["functions"]
    assert [(f["name"], f["deleted"]) for f in every] == [
        ("draft", False), ("gone", True), ("hello", False)]
    gone = every[1]
    assert (gone["stable"], gone["routes"], gone["version_count"]) == (None, [], 1)
    assert read.get("/v1/functions?deleted=0").json()["functions"] == listed
    r = read.get("/v1/functions", params={"deleted": "maybe"})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"

    # Another tenant sees its own only, even asking for deleted ones; and it never sees ours.
    assert [f["name"] for f in theirs.get("/v1/functions?deleted=1").json()["functions"]] == [
        "secret"]
    assert admin.get("/v1/functions").json()["functions"] == listed  # the admin's tenant's
    # Deployed again, a deleted function is listed as deployed.
    assert admin.post("/v1/functions/gone/deploy",
                      json={"version": 1, "routes": ["*/gone"]}).status_code == 200
    back = [f for f in read.get("/v1/functions").json()["functions"] if f["name"] == "gone"]
    assert [(f["stable"], f["deleted"], f["routes"]) for f in back] == [(1, False, ["*/gone"])]

    # Scopes: another scope alone is 403, a node token 403, like every tenant endpoint.
    for token in (server.token("default", ("operate",)), server.node):
        r = server.client(token).get("/v1/functions")
        assert r.status_code == 403 and r.json()["error"] == "forbidden"


def test_bad_requests_are_400_or_409(start_control: Start) -> None:
    server = start_control()
    admin = deployed(server)
    bad_meta = admin.post("/v1/functions/hello/versions", content=b"x",
                          headers={"edge-metadata": "!!!"})
    assert bad_meta.status_code == 400
    wrong_name = admin.post("/v1/functions/other/versions", content=b"x",
                            headers={"edge-metadata": encode_metadata(manifest(), "")})
    assert wrong_name.status_code == 400 and "names function" in wrong_name.json()["message"]
    assert admin.post("/v1/functions/hello/deploy", content=b"{").status_code == 400
    assert admin.post("/v1/functions/hello/deploy", json={"version": "1"}).status_code == 400
    assert admin.post("/v1/functions/hello/deploy", json={"version": 9}).status_code == 404
    assert admin.post("/v1/functions/hello/deploy",
                      json={"version": 1, "routes": ["no host"]}).status_code == 400
    assert admin.post("/v1/functions/hello/promote").status_code == 409
    assert admin.post("/v1/functions/Bad_Name/promote").status_code == 400
    other = server.client(server.token("other"))
    upload(other)
    taken = other.post("/v1/functions/hello/deploy",
                       json={"version": 1, "routes": ["example.com/x"]})
    assert taken.status_code == 409
    assert admin.get("/v1/nowhere").json()["error"] == "not_found"


def test_component_size_limit(start_control: Start) -> None:
    server = start_control(ControlSettings(max_component_bytes=100))
    admin = server.client(server.admin)
    r = admin.post("/v1/functions/hello/versions", content=b"x" * 101,
                   headers={"edge-metadata": encode_metadata(manifest(), "")})
    assert r.status_code == 413


def test_long_poll_wakes_within_half_a_second_of_a_deploy(start_control: Start) -> None:
    server = start_control()
    admin = deployed(server)
    upload(admin, tag="b")
    node = server.client(server.node)
    got: dict[str, Any] = {}

    def poll() -> None:
        r = node.get("/v1/node/snapshot", params={"after": 1, "wait_s": 20})
        got["at"] = time.monotonic()
        got["response"] = r

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.5)  # the poll is parked on the server
    assert "response" not in got
    sent = time.monotonic()
    assert admin.post("/v1/functions/hello/deploy", json={"version": 2}).status_code == 200
    thread.join(5)
    assert got["response"].status_code == 200
    assert got["response"].headers["edge-revision"] == "2"
    assert got["at"] - sent < 0.5


def test_long_poll_times_out_with_204_and_answers_at_once_when_behind(
    start_control: Start,
) -> None:
    server = start_control()
    deployed(server)
    node = server.client(server.node)
    t0 = time.monotonic()
    assert node.get("/v1/node/snapshot", params={"after": 1, "wait_s": 0.3}).status_code == 204
    assert 0.25 < time.monotonic() - t0 < 2
    assert node.get("/v1/node/snapshot", params={"after": 0, "wait_s": 10}).status_code == 200
    # A node ahead of this database (restored from backup) hears the truth at once.
    assert node.get("/v1/node/snapshot", params={"after": 99, "wait_s": 10}).status_code == 200
    assert node.get("/v1/node/snapshot", params={"after": "x"}).status_code == 400


def test_public_key_and_openapi(start_control: Start) -> None:
    server = start_control()
    c = server.client(server.admin)
    key = c.get("/v1/public-key").json()
    assert key["public_key"] == server.signer.public_key.hex() and key["algorithm"] == "ed25519"
    spec = c.get("/openapi.json").json()
    assert "post" in spec["paths"]["/v1/functions/{name}/deploy"]
    listing = spec["paths"]["/v1/functions"]["get"]
    assert listing["summary"] == "This tenant's functions by name (scope read)."
    assert "deleted=1" in listing["description"]
    assert spec["paths"]["/v1/node/snapshot"]["get"]["summary"].startswith("Long poll")


def test_an_error_before_the_body_is_read_closes_that_connection(start_control: Start) -> None:
    """A 403 on an upload is answered before its body is read, so the server cannot reuse the
    connection: it says `connection: close`, and the client's next request goes to a new one
    instead of failing on the one being closed."""
    server = start_control()
    reader = server.client(server.token("default", ("read",)))
    for _ in range(10):
        r = upload(reader)
        assert r.status_code == 403 and r.headers["connection"] == "close"
        assert reader.get("/v1/status").status_code == 200
    assert reader.get("/v1/nothing").headers.get("connection") != "close"  # no body: kept


def test_bytes_that_are_not_a_component_are_refused_at_upload(start_control: Start) -> None:
    """Random bytes, a component cut short and a core module would be signed and pushed to
    every node, which could then only answer 503: the upload is refused instead, and nothing
    is stored."""
    server = start_control()
    admin = server.client(server.admin)
    meta = {"edge-metadata": encode_metadata(manifest(), "")}
    good = component("whole")
    cases = {
        "not a WebAssembly binary": bytes(range(7, 200)),
        "truncated": good[:-3],
        "unknown section id": good + b"\x2a\x00",
        "core WebAssembly module": b"\x00asm\x01\x00\x00\x00",
        "version/layer": b"\x00asm\x0e\x00\x01\x00",
    }
    for words, body in cases.items():
        r = admin.post("/v1/functions/hello/versions", content=body, headers=meta)
        assert r.status_code == 400, (words, r.text)
        assert r.json()["error"] == "not_a_component" and words in r.json()["message"], r.text
    assert admin.get("/v1/functions/hello/versions").status_code == 404  # nothing was stored
    assert admin.post("/v1/functions/hello/versions", content=good, headers=meta).status_code \
        == 201


def test_numbers_past_64_bits_and_control_characters_are_400_not_500(
    start_control: Start,
) -> None:
    server = start_control()
    admin = deployed(server)
    huge = 2**70
    for path, body in (
        ("/v1/functions/hello/deploy", {"version": huge}),
        ("/v1/functions/hello/rollback", {"to": huge}),
        ("/v1/functions/hello/canary", {"version": -huge, "percent": 5}),
    ):
        r = admin.post(path, json=body)
        assert r.status_code == 400 and "out of range" in r.json()["message"], (path, r.text)
    node = server.client(server.node)
    report = {"node_id": "n1", "region": "eu", "revision": huge, "healthy": True}
    assert node.post("/v1/node/report", json=report).status_code == 400
    assert admin.post(f"/v1/tokens/{huge}/revoke").status_code == 404
    assert admin.post("/v1/tokens/\u00b2/revoke").status_code == 404
    r = admin.get("/v1/functions/hello/logs", params={"after": str(huge)})
    assert r.status_code == 400 and "out of range" in r.json()["message"]
    for route in ("exa\x00mple.com/", "example.com/a\x1bb", "example.com/\x7f"):
        r = admin.post("/v1/functions/hello/deploy", json={"version": 1, "routes": [route]})
        assert r.status_code == 400 and "HOST/PATH" in r.json()["message"], (route, r.text)
    # Nothing of the above made a revision.
    assert admin.get("/v1/status").json()["functions"][0]["routes"] == ["example.com/"]


def test_a_body_sent_without_a_length_is_cut_off_at_the_limit(
    start_control: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunked upload used to be read whole before its size was checked (200 MiB took the
    control plane to ~490 MiB resident). Now the answer is 413 as soon as the limit is passed:
    here before the client has even finished sending."""
    monkeypatch.setattr(bodies, "MAX_JSON_BYTES", 1000)
    server = start_control(ControlSettings(max_component_bytes=100))
    host, port = server.url.removeprefix("http://").split(":")
    meta = encode_metadata(manifest(), "")
    for path, extra in (("/v1/functions/hello/versions", f"edge-metadata: {meta}\r\n"),
                        ("/v1/functions/hello/deploy", "content-type: application/json\r\n")):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall((f"POST {path} HTTP/1.1\r\nhost: {host}\r\n"
                       f"authorization: Bearer {server.admin}\r\n{extra}"
                       "transfer-encoding: chunked\r\n\r\n").encode())
            chunk = b" " * 1500  # over both limits; the last chunk never comes
            s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            received = b""
            while data := s.recv(65536):  # "connection: close": it ends at the answer's end
                received += data
            answer = received.decode()
        assert answer.startswith("HTTP/1.1 413"), (path, answer)
        assert '"error":"payload_too_large"' in answer


def test_healthz_needs_no_token_and_fails_when_the_database_does(start_control: Start) -> None:
    """A load balancer or supervisor in front of the control plane has no token; it had only
    /metrics, which answers whatever state the database is in."""
    server = start_control()
    anonymous = server.client(None)
    assert anonymous.get("/healthz").json() == {"ok": True, "revision": 0}
    deployed(server)
    assert anonymous.get("/healthz").json() == {"ok": True, "revision": 1}
    assert "/healthz" not in anonymous.get("/openapi.json", headers={
        "authorization": f"Bearer {server.admin}"}).json()["paths"]
    server.store.close()  # the database is gone from under the server
    r = anonymous.get("/healthz")
    assert r.status_code == 503 and r.json()["ok"] is False
