import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.control import store as store_module
from edge.control.errors import NotFound, SnapshotRejected
from edge.control.migrations import MIGRATIONS
from edge.control.records import NodeEndpoint
from edge.control.regions import RegionDrain, parse_duration_s, share_now
from edge.control.signing import Signer, canonical_cbor
from edge.control.snapshot import build_snapshot, open_snapshot, sign_payload
from edge.control.store import Store
from edge.errors import BadRequest
from edge.traffic.drain_follower import FollowedDrain, apply_regions
from edge.traffic.regions import parse_traffic_config
from edge.traffic.state import TrafficState

from .conftest import ControlServer, FakeClock, add_version


def test_drain_ramps_down_and_reports_its_state() -> None:
    d = RegionDrain("eu-west", "drain", started_unix=100.0, over_s=10.0, from_share=1.0)
    assert (d.share(100.0), d.state(100.0)) == (1.0, "draining")
    assert d.share(105.0) == pytest.approx(0.5)
    assert (d.share(110.0), d.state(110.0)) == (0.0, "drained")
    assert share_now(None, 123.0) == 1.0


def test_undrain_halfway_starts_from_where_the_drain_got(tmp_path: Path) -> None:
    clock = FakeClock()
    with Store(tmp_path, now=clock) as store:
        store.set_region("eu-west", 53.35, -6.26, None, "ops")
        store.set_region_drain("eu-west", "drain", 10.0)
        clock.advance(4.0)
        back = store.set_region_drain("eu-west", "undrain", 4.0)
        assert back.region.drain is not None
        assert back.region.drain.from_share == pytest.approx(0.6)  # no jump
        clock.advance(2.0)
        assert store.regions()["eu-west"].share(clock()) == pytest.approx(0.8)
        clock.advance(2.0)
        assert store.regions()["eu-west"].state(clock()) == "active"


def test_every_region_change_is_one_revision_and_repeats_change_nothing(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    with Store(tmp_path, now=clock) as store:
        a = store.set_region("eu-west", 53.35, -6.26, 100, "ops")
        assert (a.revision, a.changed) == (1, True)
        assert not store.set_region("eu-west", 53.35, -6.26, None, "ops").changed
        assert store.set_region_drain("eu-west", "drain", 10.0, "ops").revision == 2
        clock.advance(20.0)
        assert not store.set_region_drain("eu-west", "drain", 5.0, "ops").changed  # drained
        undrained = store.set_region_drain("eu-west", "undrain", 0.0, "ops")
        assert undrained.revision == 3 and undrained.region.drain is None
        assert not store.set_region_drain("eu-west", "undrain", 0.0, "ops").changed
        rows = store.revisions()
        assert [(r.kind, r.subject, r.function) for r in rows] == [("region", "eu-west", None)] * 3
        assert rows[1].change["drain"][0] is None
        with pytest.raises(NotFound, match="no region 'eu-wst'"):
            store.set_region_drain("eu-wst", "drain", 10.0)
        with pytest.raises(BadRequest, match="latitude"):
            store.set_region("x", 91.0, 0.0, None, "ops")
        assert store.revision() == 3  # the refused changes wrote nothing


def test_config_at_rebuilds_regions_and_nodes_of_any_revision(tmp_path: Path) -> None:
    clock = FakeClock()
    with Store(tmp_path, now=clock) as store:
        store.set_region("eu-west", 53.35, -6.26, 100, "ops")  # 1
        # A report with a URL is a node joining: one revision; a heartbeat is not.
        assert store.report_node("eu-1", "eu-west", 1, True, None, url="http://10.0.0.1:8787") == 2
        assert store.report_node("eu-1", "eu-west", 2, True, None, url="http://10.0.0.1:8787") \
            is None
        assert store.report_node("quiet", "eu-west", 2, True, None) is None  # no URL: not a target
        store.set_region_drain("eu-west", "drain", 60.0, "ops")  # 3
        store.report_node("eu-1", "eu-west", 3, True, None, url="http://10.0.0.9:8787")  # 4
        at1, at3, at4 = store.config_at(1), store.config_at(3), store.config_at(4)
    assert at1.regions[0].drain is None and at1.nodes == ()
    assert at3.regions[0].drain is not None and at3.nodes[0].url == "http://10.0.0.1:8787"
    assert at4.nodes[0].url == "http://10.0.0.9:8787"


def test_request_rate_from_two_reports(tmp_path: Path) -> None:
    clock = FakeClock()
    with Store(tmp_path, now=clock) as store:
        store.report_node("n1", "eu", 0, True, None, requests_total=100)
        clock.advance(5.0)
        store.report_node("n1", "eu", 0, True, None, requests_total=600)
        assert store.nodes()[0].requests_per_s == pytest.approx(100.0)
        clock.advance(5.0)
        store.report_node("n1", "eu", 0, True, None, requests_total=10)  # restarted: no rate
        assert store.nodes()[0].requests_per_s is None


def test_migration_5_keeps_revisions_and_turns_drains_into_region_revisions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = {n: m for n, m in MIGRATIONS.items() if n <= 4}
    monkeypatch.setattr(store_module, "MIGRATIONS", old)
    clock = FakeClock()
    with Store(tmp_path, now=clock) as store:
        t = store.create_tenant("acme")
        add_version(store, t, "hello")
        store.deploy(t, "hello", 1, [("*", "/")], "u")
        with store._tx() as db:  # what the previous release wrote for `edge region drain`
            db.execute("INSERT INTO region_drains VALUES ('eu-west', 'drain', ?, 60, 1.0)",
                       (clock(),))
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    with Store(tmp_path, now=clock) as store:
        assert store.schema_versions()[-1] == max(MIGRATIONS)
        rows = store.revisions()
        assert [(r.number, r.kind, r.subject) for r in rows] == [
            (1, "deploy", None), (2, "region", "eu-west")
        ]
        region = store.regions()["eu-west"]
        assert region.drain is not None and region.drain.over_s == 60
        config = store.config_at(2)
        assert config.regions == (region,) and len(config.functions) == 1
        # The new CHECK is in force: a region change names its region.
        with pytest.raises(sqlite3.IntegrityError), store._tx() as db:
            db.execute("INSERT INTO revisions VALUES (9, 0, NULL, NULL, 'region', '', '', '')")


def test_snapshot_carries_regions_and_nodes_and_old_snapshots_still_open(
    tmp_path: Path,
) -> None:
    signer = Signer.generate()
    clock = FakeClock()
    with Store(tmp_path, now=clock) as store:
        assert open_snapshot(build_snapshot(store, 0, signer), signer.public_key).regions == {}
        store.set_region("eu-west", 53.35, -6.26, 40, "ops")
        store.report_node("us-1", "us-east", 0, True, None, url="http://10.0.0.2:8787")
        store.set_region_drain("us-east", "drain", 30.0, "ops")
        snap = open_snapshot(build_snapshot(store, store.revision(), signer), signer.public_key)
    eu, us = snap.regions["eu-west"], snap.regions["us-east"]
    assert (eu.latitude_deg, eu.longitude_deg, eu.weight, eu.drain) == (53.35, -6.26, 40, None)
    assert us.latitude_deg is None and us.drain is not None and us.drain.over_s == 30.0
    assert snap.nodes["us-1"] == NodeEndpoint("us-1", "us-east", "http://10.0.0.2:8787")

    def payload(extra: dict[str, Any]) -> bytes:
        body = {"format": 1, "revision": 1, "created_unix": 0.0, "routes": [], "functions": {},
                **extra}
        return sign_payload(canonical_cbor(body), signer)

    assert open_snapshot(payload({}), signer.public_key).nodes == {}  # an older control plane
    bad = [
        {"regions": {"eu-west": {"latitude": 95.0, "longitude": 0.0}}},
        {"regions": {"eu-west": {"latitude": 5.0}}},
        {"regions": {"Bad Name": {}}},
        {"regions": {"eu-west": {"weight": 101}}},
        {"regions": {"eu-west": {"drain": {"direction": "sideways", "started_unix": 0.0,
                                           "over_s": 1.0, "from_share": 1.0}}}},
        {"nodes": {"n": {"region": "eu-west", "url": "ftp://x"}}},
        {"nodes": []},
    ]
    for extra in bad:
        with pytest.raises(SnapshotRejected):
            open_snapshot(payload(extra), signer.public_key)


def test_regions_api_over_http(start_control: Callable[..., ControlServer]) -> None:
    server = start_control()
    admin = server.client(server.admin)
    reader = server.client(server.token("acme", ("read",)))
    node = server.client(server.node)
    r = admin.put("/v1/regions/eu-west", json={"latitude": 53.35, "longitude": -6.26,
                                                "weight": 100})
    assert r.status_code == 200 and r.json()["revision"] == 1, r.text
    assert reader.put("/v1/regions/eu-west", json={"latitude": 1, "longitude": 1}).status_code \
        == 403
    assert admin.put("/v1/regions/eu-west", json={"latitude": "x"}).status_code == 400
    assert admin.put("/v1/regions/EU", json={"latitude": 1, "longitude": 1}).status_code == 400
    report = {"node_id": "eu-1", "region": "eu-west", "revision": 1, "healthy": True,
              "url": "http://127.0.0.21:8787", "requests_total": 5}
    assert node.post("/v1/node/report", json=report).json()["revision"] == 2  # joined
    drained = admin.post("/v1/regions/eu-west/drain", json={"over_s": 60})
    assert drained.json()["revision"] == 3 and drained.json()["state"] == "draining"
    assert admin.post("/v1/regions/nowhere/drain", json={}).status_code == 404
    listing = reader.get("/v1/regions").json()
    (eu,) = listing["regions"]
    assert eu["name"] == "eu-west" and eu["weight"] == 100 and eu["configured"]
    assert (eu["nodes"], eu["healthy_nodes"], eu["stale_nodes"]) == (1, 1, 0)
    assert eu["requests_per_s"] is None  # one report: no rate yet
    assert node.get("/v1/regions").status_code == 200  # the DNS server and nodes read it
    snap = open_snapshot(node.get("/v1/node/snapshot?wait_s=1").content,
                         server.signer.public_key)
    assert snap.revision == 3 and snap.regions["eu-west"].drain is not None
    assert set(snap.nodes) == {"eu-1"}


def test_nodes_report_dns_addresses_listed_per_region(
    start_control: Callable[..., ControlServer],
) -> None:
    server = start_control()
    admin, node = server.client(server.admin), server.client(server.node)
    admin.put("/v1/regions/eu-west", json={"latitude": 53.35, "longitude": -6.26})
    report = {"node_id": "eu-1", "region": "eu-west", "revision": 0, "healthy": True,
              "url": "http://127.0.0.21:8787", "ipv4": "127.0.0.21", "ipv6": "2001:DB8::21"}
    assert node.post("/v1/node/report", json=report).json()["revision"] == 2  # joined
    assert node.post("/v1/node/report", json=report).json()["revision"] == 2  # a heartbeat
    moved = {**report, "ipv4": "127.0.0.31"}
    assert node.post("/v1/node/report", json=moved).json()["revision"] == 3  # new address
    for bad, says in (({"ipv4": "2001:db8::1"}, "IPv4"), ({"ipv6": "127.0.0.1"}, "IPv6"),
                      ({"ipv4": "300.1.1.1"}, "IPv4"), ({"ipv4": 7}, "string")):
        r = node.post("/v1/node/report", json={**report, **bad})
        assert r.status_code == 400 and says in r.json()["message"], r.text
    (eu,) = admin.get("/v1/regions").json()["regions"]
    assert eu["endpoints"] == [{"node": "eu-1", "url": "http://127.0.0.21:8787",
                                "ipv4": "127.0.0.31", "ipv6": "2001:db8::21", "stale": False}]
    # The signed snapshot carries them too (as configuration, like the node's URL).
    snap = open_snapshot(node.get("/v1/node/snapshot?wait_s=1").content,
                         server.signer.public_key)
    assert (snap.nodes["eu-1"].ipv4, snap.nodes["eu-1"].ipv6) == ("127.0.0.31", "2001:db8::21")


@pytest.mark.parametrize(("text", "seconds"),
                         [("90", 90), ("30s", 30), ("5m", 300), ("1h", 3600), ("90d", 7_776_000)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


def test_bad_duration() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_s("soon")


def test_dns_follows_ramps_through_the_clock_offset() -> None:
    config = parse_traffic_config(
        {
            "dns": {"zone": "edge.test.", "hosts": ["www"], "nameservers": ["ns1.edge.test."]},
            "region": [
                {"name": "eu-west", "latitude_deg": 53.3, "longitude_deg": -6.2,
                 "node": [{"name": "e1", "ipv4": "127.0.0.21",
                           "health_url": "http://127.0.0.21:8787/healthz"}]},
            ],
        },
        "traffic.toml",
    )
    state = TrafficState(config)
    drain = {"direction": "drain", "started_unix": 1000.0, "over_s": 10.0, "from_share": 1.0}
    # Monotonic 0 is unix 1000 here: 5 s into the ramp the share is half.
    apply_regions(state, [{"name": "eu-west", "drain": drain}, {"name": "nowhere"}], 1000.0)
    assert isinstance(state.drains["eu-west"], FollowedDrain)
    assert state.drains["eu-west"].share(5.0) == pytest.approx(0.5)
    apply_regions(state, [{"name": "eu-west", "drain": None}], 1000.0)
    assert state.drains["eu-west"].share(5.0) == 1.0
    # A weight set at the control plane wins over traffic.toml's; unset (null) gives it back.
    apply_regions(state, [{"name": "eu-west", "drain": None, "weight": 0}], 1000.0)
    assert state.status(5.0, 4)["eu-west"].weight == 0
    apply_regions(state, [{"name": "eu-west", "drain": None, "weight": None}], 1000.0)
    assert state.status(5.0, 4)["eu-west"].weight == 100


def test_region_commands(start_control: Callable[..., ControlServer]) -> None:
    import typer
    from typer.testing import CliRunner

    from edge.control.region_commands import register

    app = typer.Typer()
    register(app)
    server = start_control()
    env = {"EDGE_CONTROL_URL": server.url, "EDGE_TOKEN": server.admin}

    def run(*args: str) -> str:
        result = CliRunner().invoke(app, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.output

    out = run("region", "set", "us-east", "--lat", "39.04", "--lon", "-77.49", "--weight", "100")
    assert "us-east: 39.04, -77.49, weight 100, revision 1" in out
    assert json.loads(run("region", "set", "us-east", "--lat", "39.04", "--lon", "-77.49",
                          "--json"))["changed"] is False
    drained = json.loads(run("region", "drain", "us-east", "--over", "5m", "--json"))
    assert drained["drain"]["over_s"] == 300.0 and drained["state"] == "draining"
    assert "draining" in run("regions")
    listing = json.loads(run("regions", "--json"))["regions"]
    assert [(r["name"], r["weight"], r["nodes"]) for r in listing] == [("us-east", 100, 0)]
    assert "active" in run("region", "undrain", "us-east")
    bad = CliRunner().invoke(app, ["region", "drain", "us-east", "--over", "soon"], env=env)
    assert bad.exit_code == 1 and "not a duration" in bad.output
    missing = CliRunner().invoke(app, ["region", "drain", "nowhere"], env=env)
    assert missing.exit_code == 1 and "no region 'nowhere'" in missing.output


def test_draining_the_last_region_that_takes_traffic_warns(
    start_control: Callable[..., ControlServer],
) -> None:
    import typer
    from typer.testing import CliRunner

    from edge.control.region_commands import register

    app = typer.Typer()
    register(app)
    server = start_control()
    node = server.client(server.node)
    for node_id, region in (("eu-1", "eu-west"), ("us-1", "us-east")):
        r = node.post("/v1/node/report", json={"node_id": node_id, "region": region,
                                               "revision": 0, "healthy": True})
        assert r.status_code == 200, r.text
    env = {"EDGE_CONTROL_URL": server.url, "EDGE_TOKEN": server.admin}

    def drain(name: str) -> str:
        result = CliRunner().invoke(app, ["region", "drain", name, "--over", "0"], env=env)
        assert result.exit_code == 0, result.output
        return str(result.stderr)

    assert "warning" not in drain("eu-west")
    said = drain("us-east")
    assert "warning: every region with nodes is now draining or drained" in said
    assert "fail open" in said


def test_regions_table_rows() -> None:
    from edge.control.region_commands import region_row

    row = {"name": "eu-west", "state": "draining", "share": 0.25, "weight": None,
           "healthy_nodes": 1, "nodes": 3, "stale_nodes": 1, "requests_per_s": 12.34}
    assert region_row(row) == ("eu-west", "draining", "25%", "-", "degraded", "1/3 (1 stale)",
                               "12.3 req/s")
