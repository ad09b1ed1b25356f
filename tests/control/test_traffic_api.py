"""The dashboard's page and its JSON endpoints over real sockets: the static files, the live
traffic a node reports (POST /v1/node/traffic) and what each token sees of it (GET /v1/traffic)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from edge.node.traffic_report import BUCKET_COUNT
from tests.control.conftest import ControlServer, add_version

Start = Callable[..., ControlServer]


def traffic(count: int, function: str = "default/hello", started: float = 1.0) -> dict[str, Any]:
    buckets = [0] * BUCKET_COUNT
    buckets[5] = count  # every request between 1 and 2 ms
    return {
        "node_id": "n1", "region": "eu-west", "started_unix": started,
        "series": [{"function": function, "version": "1", "since_unix": started,
                    "buckets": buckets}],
    }  # fmt: skip


def test_the_dashboard_is_static_and_locked_down(start_control: Start) -> None:
    server = start_control()
    anonymous = server.client(None)
    page = anonymous.get("/dashboard/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="app.js">' in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    script = anonymous.get("/dashboard/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "Authorization" not in script.text and "sessionStorage" in script.text
    assert anonymous.get("/dashboard/style.css").headers["content-type"].startswith("text/css")
    assert anonymous.get("/dashboard/nothing.js").status_code == 404
    root = anonymous.get("/", follow_redirects=False)
    assert root.status_code in (302, 307) and root.headers["location"] == "/dashboard/"
    # The page holds no data: everything it shows needs a token.
    assert anonymous.get("/v1/traffic").status_code == 401


def test_traffic_needs_a_read_token_and_node_reports_need_a_node_token(
    start_control: Start,
) -> None:
    server = start_control()
    assert server.client(None).post("/v1/node/traffic", json=traffic(1)).status_code == 401
    assert server.client(server.admin).post("/v1/node/traffic", json=traffic(1)).status_code == 403
    assert server.client(server.node).get("/v1/traffic").status_code == 403
    deploy_only = server.client(server.token("default", ("deploy",)))
    r = deploy_only.get("/v1/traffic")
    assert r.status_code == 403 and r.json()["error"] == "forbidden"


def test_bad_traffic_reports_are_400_and_change_nothing(start_control: Start) -> None:
    server = start_control()
    node = server.client(server.node)
    for body in ({}, {**traffic(1), "series": "all"}, traffic(1, function="no-tenant")):
        r = node.post("/v1/node/traffic", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "bad_request"
    r = node.post("/v1/node/traffic", content=b"{not json", headers={"content-type": "x"})
    assert r.status_code == 400
    too_many = {**traffic(1), "series": traffic(1)["series"] * 1001}
    assert node.post("/v1/node/traffic", json=too_many).status_code == 413


def test_reported_traffic_shows_per_function_and_region_for_its_tenant_only(
    start_control: Start,
) -> None:
    server = start_control()
    tenant_id = server.store.authenticate(server.admin).tenant_id  # type: ignore[union-attr]
    assert tenant_id is not None
    add_version(server.store, tenant_id, "hello")
    node = server.client(server.node)
    assert node.post("/v1/node/traffic", json=traffic(1000)).status_code == 200
    assert node.post("/v1/node/traffic", json=traffic(1250)).status_code == 200
    # Another tenant's function on the same node.
    for count in (40, 90):
        r = node.post("/v1/node/traffic", json=traffic(count, function="other/hello"))
        assert r.status_code == 200

    admin = server.client(server.admin)
    view = admin.get("/v1/traffic").json()
    assert view["window_s"] == 10.0
    [row] = view["regions"]
    assert (row["function"], row["region"], row["requests"]) == ("hello", "eu-west", 250)
    assert row["requests_per_s"] > 0 and set(row["versions"]) == {"1"}
    assert 1.0 < row["p50_ms"] < row["p99_ms"] <= 2.0
    assert [f["function"] for f in view["functions"]] == ["hello"]
    [only] = admin.get("/v1/traffic?function=hello").json()["regions"]
    assert (only["function"], only["requests"]) == ("hello", 250)

    other = server.client(server.token("other", ("read",)))
    mine = other.get("/v1/traffic").json()
    assert [r["requests"] for r in mine["regions"]] == [50]  # its own, never tenant default's
    # Another tenant's function looks exactly like a missing one.
    for client in (other, admin):
        r = client.get("/v1/traffic?function=nosuch")
        assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert other.get("/v1/traffic?function=hello").status_code == 404
    assert admin.get("/v1/traffic?function=Bad%20Name").status_code == 400


def test_dashboard_buttons_are_checked_like_cli_calls(start_control: Start) -> None:
    """The page calls the same endpoints: a read-only token cannot drain, promote or roll back."""
    server = start_control()
    admin = server.client(server.admin)
    assert admin.put("/v1/regions/eu-west", json={"latitude": 53.3, "longitude": -6.3}).is_success
    reader = server.client(server.token("default", ("read",)))
    assert reader.get("/v1/regions").status_code == 200
    assert reader.post("/v1/regions/eu-west/drain", json={"over_s": 0}).status_code == 403
    assert reader.post("/v1/functions/hello/promote", json={}).status_code == 403
    assert reader.post("/v1/functions/hello/rollback", json={"to": None}).status_code == 403
    outsider = server.client(server.token("other"))
    assert outsider.get("/v1/functions/hello/versions").status_code == 404
    r = admin.post("/v1/regions/eu-west/drain", json={"over_s": 0})
    assert r.status_code == 200 and r.json()["state"] == "drained"


def test_traffic_is_listed_in_openapi(start_control: Start) -> None:
    server = start_control()
    paths = server.client(server.admin).get("/openapi.json").json()["paths"]
    assert "get" in paths["/v1/traffic"] and "post" in paths["/v1/node/traffic"]
    assert isinstance(httpx.get(server.url + "/dashboard/").text, str)
