"""The control plane's `/metrics`: convergence timing and node states on a frozen clock, and the
API's request counter over real sockets with bounded labels."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx

from edge.control.metrics import ControlMetrics
from edge.control.store import Store

from ..metrics_text import Scrape, delta
from .conftest import ControlServer, FakeClock, add_version


def metrics_of(store: Store, clock: FakeClock) -> ControlMetrics:
    return ControlMetrics(store.revision, store.nodes, store.revision_created, 60.0, clock)


def test_convergence_times_pushes_not_catching_up(
    make_store: Callable[..., Store], clock: FakeClock
) -> None:
    store = make_store()
    tenant = store.create_tenant("acme")
    m = metrics_of(store, clock)
    old = store.deploy(tenant, "hello", add_version(store, tenant), [("*", "/")], "t").revision
    clock.advance(100)
    assert m.node_reported("late", old) is None  # first heard of: catching up, not timed
    assert m.node_reported("n1", 0) is None
    pushed = store.deploy(tenant, "hello", add_version(store, tenant), None, "t").revision
    clock.advance(0.25)
    assert m.node_reported("n1", pushed) == 0.25
    assert m.node_reported("n1", pushed) is None  # a heartbeat repeating it
    clock.advance(0.5)
    assert m.node_reported("late", pushed) == 0.75
    assert m.node_reported("n1", pushed - 1) is None  # older: never timed
    later = store.deploy(tenant, "hello", add_version(store, tenant), None, "t").revision
    skipped = store.deploy(tenant, "hello", add_version(store, tenant), None, "t").revision
    clock.advance(2)
    assert m.node_reported("n1", skipped) == 2.0 and later < skipped
    text = Scrape(m.exposition().decode())
    assert text.value("edge_control_convergence_seconds_count") == 3
    assert text.value("edge_control_convergence_seconds_sum") == 3.0
    assert text.value("edge_control_convergence_seconds_bucket", le="0.3") == 1
    assert text.value("edge_control_revision") == skipped


def test_nodes_by_region_and_state(make_store: Callable[..., Store], clock: FakeClock) -> None:
    store = make_store()
    tenant = store.create_tenant("acme")
    revision = store.deploy(tenant, "hello", add_version(store, tenant), [("*", "/")], "t").revision
    store.report_node("gone", "eu-west", revision, True, None)
    clock.advance(61)  # past the 60 s staleness window
    store.report_node("cur", "eu-west", revision, True, None)
    store.report_node("old", "eu-west", revision - 1, True, None)
    store.report_node("bad", "us-east", revision - 1, True, None, last_error="refused: bad sig")
    text = Scrape(metrics_of(store, clock).exposition().decode())
    states = {
        (ls["region"], ls["state"]): text.value("edge_control_nodes", **ls)
        for ls in text.label_sets("edge_control_nodes")
    }
    assert states == {
        ("eu-west", "current"): 1, ("eu-west", "behind"): 1, ("eu-west", "refused"): 0,
        ("eu-west", "unreachable"): 1, ("us-east", "current"): 0, ("us-east", "behind"): 0,
        ("us-east", "refused"): 1, ("us-east", "unreachable"): 0,
    }  # fmt: skip


def test_api_requests_by_route_template(start_control: Callable[..., ControlServer]) -> None:
    server = start_control()
    admin = server.client(server.admin)
    anonymous = server.client(None)
    before = Scrape.of(server.url)
    for _ in range(3):
        assert admin.get("/v1/status").status_code == 200
    assert admin.get("/v1/functions/hello/versions").status_code == 404  # no such function
    assert anonymous.get("/v1/functions/hello/versions").status_code == 401
    secret = uuid.uuid4().hex
    for i in range(50):
        assert anonymous.get(f"/nope/{secret}/{i}").status_code == 404
        assert anonymous.request(f"M{i}", "/v1/status").status_code == 405
    after = Scrape.of(server.url)
    c = "edge_control_api_requests_total"
    assert delta(before, after, c, route="/v1/status", method="GET", status="200") == 3
    versions = "/v1/functions/{name}/versions"
    assert delta(before, after, c, route=versions, method="GET", status="404") == 1
    assert delta(before, after, c, route=versions, method="GET", status="401") == 1
    assert delta(before, after, c, route="unmatched", method="GET", status="404") == 50
    assert delta(before, after, c, route="/v1/status", method="other", status="405") == 50
    assert delta(before, after, c, route="/metrics", method="GET", status="200") == 1
    assert secret not in after.text and "M7" not in after.text
    assert len(after.label_sets(c)) <= 8
    # No token needed, and the API's description does not list it.
    assert httpx.get(server.url + "/metrics").status_code == 200
    assert "/metrics" not in admin.get("/openapi.json").json()["paths"]
