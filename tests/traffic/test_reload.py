"""Reloading traffic.toml in process (sans-I/O): the plan a new file makes and what `install`
does to a running stack's answers and health. The signal and the process are in
test_main.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.errors import ConfigError
from edge.traffic.geodb import GeoDB
from edge.traffic.health import NodeState
from edge.traffic.metrics import DnsCollector, ReloadStats
from edge.traffic.regions import IPAddress, Node, Region, TrafficConfig, load_traffic_config
from edge.traffic.reload import ReloadPlan, install, plan_reload, region_map_after
from edge.traffic.steering import GeoHit, GeoSource

from .conftest import BASE_TOML, MakeConfig, MakeStack, Stack
from .test_dns import LONDON_ECS, addresses, ask, query

EU_WEST = {"192.0.2.11", "192.0.2.12"}


def plan_for(stack: Stack, new: TrafficConfig, following_control: bool = False) -> ReloadPlan:
    return plan_reload(stack.state.config, new, stack.state.regions,
                       source="traffic.toml", following_control=following_control)  # fmt: skip


def reload(stack: Stack, new: TrafficConfig) -> ReloadPlan:
    plan = plan_for(stack, new)
    install(plan, stack.state, stack.authority, stack.geo)
    return plan


def test_a_steering_rule_and_an_address_change_the_answers(
    make_stack: MakeStack, make_config: MakeConfig
) -> None:
    stack = make_stack()
    london = query(ecs=LONDON_ECS)
    assert addresses(ask(stack, london)) == EU_WEST  # and now in the wire cache
    moved = BASE_TOML.replace('ipv4 = "192.0.2.1"', 'ipv4 = "192.0.2.2"')
    plan = reload(stack, make_config('[steering.country]\nGB = ["us-east"]\n', moved))
    assert addresses(ask(stack, london)) == {"192.0.2.2"}
    assert "[steering] changed" in plan.changes and "node us-east-1 changed" in plan.changes
    assert plan.restart_needed == ()


def test_zone_records_and_ttl_follow_the_file(
    make_stack: MakeStack, make_config: MakeConfig
) -> None:
    stack = make_stack()
    assert ask(stack, query()).answer[0].ttl == 30
    assert addresses(ask(stack, query("ns1.edge.test."))) == {"192.0.2.53"}
    new = BASE_TOML.replace("ttl_s = 30", "ttl_s = 7").replace("192.0.2.53", "192.0.2.54")
    new = new.replace('hosts = ["@", "www", "api.v1"]', 'hosts = ["@", "api.v1"]')
    reload(stack, make_config(base=new))
    assert addresses(ask(stack, query("ns1.edge.test."))) == {"192.0.2.54"}
    assert ask(stack, query("api.v1.edge.test.")).answer[0].ttl == 7
    assert not ask(stack, query()).answer  # www is no longer a host: NXDOMAIN with the SOA
    assert ask(stack, query()).authority[0][0].minimum == 7


def test_a_kept_node_keeps_its_health_a_changed_url_starts_over(
    make_stack: MakeStack, make_config: MakeConfig
) -> None:
    stack = make_stack()
    stack.set_node("eu-west-1", up=False)
    stack.set_node("ap-south-1", up=False)
    before = stack.state.health["eu-west-1"]
    new = BASE_TOML.replace("rise = 2\nfall = 2", "rise = 5\nfall = 4").replace(
        'ipv4 = "192.0.2.21"\nipv6 = "2001:db8::21"\nhealth_url = "http://127.0.0.1:9/healthz"',
        'ipv4 = "192.0.2.21"\nipv6 = "2001:db8::21"\nhealth_url = "http://127.0.0.1:10/healthz"',
    )
    plan = reload(stack, make_config(base=new))
    kept = stack.state.health["eu-west-1"]
    assert kept is before and kept.state is NodeState.DOWN  # no `fall` checks again
    assert (kept.rise, kept.fall) == (5, 4)
    # Down, then a pass: still down until the new rise (5) is met.
    kept.check_ok(1.0)
    assert kept.state is NodeState.DOWN
    assert addresses(ask(stack, query(ecs=LONDON_ECS))) == {"192.0.2.12"}
    fresh = stack.state.health["ap-south-1"]
    assert fresh.state is NodeState.UNKNOWN and fresh.fall == 4
    assert "node ap-south-1 changed (health starts over: new health URL)" in plan.changes


def test_removed_and_added_nodes_and_regions(
    make_stack: MakeStack, make_config: MakeConfig
) -> None:
    stack = make_stack()
    stack.set_node("eu-west-2", up=False)
    new = BASE_TOML.replace(
        '[[region.node]]\nipv4 = "192.0.2.12"\nhealth_url = "http://127.0.0.1:9/healthz"\n', ""
    ).replace('name = "ap-south"', 'name = "ap-east"')
    plan = reload(stack, make_config(base=new))
    assert set(stack.state.health) == {"us-east-1", "eu-west-1", "ap-east-1"}
    assert set(stack.state.drains) == {"us-east", "eu-west", "ap-east"}
    assert stack.state.health["ap-east-1"].state is NodeState.UNKNOWN
    assert {"node eu-west-2 removed", "region ap-south removed", "region ap-east added",
            "node ap-east-1 added"} <= set(plan.changes)  # fmt: skip
    assert addresses(ask(stack, query(ecs=LONDON_ECS))) == {"192.0.2.11"}


def test_restart_only_settings_keep_their_running_values(
    make_stack: MakeStack, make_config: MakeConfig
) -> None:
    stack = make_stack()
    new = make_config(
        base=BASE_TOML.replace(
            "ttl_s = 30", 'ttl_s = 30\nport = 5354\nworkers = 3\nmetrics_listen = "127.0.0.1:9"'
        )
    )
    plan = plan_for(stack, new)
    assert plan.config.dns.port == 53 and plan.config.dns.workers == 0
    assert plan.config.dns.metrics_listen == ""
    assert plan.restart_needed == (
        "[dns] port 53 -> 5354", "[dns] workers 0 -> 3", "[dns] metrics_listen '' -> '127.0.0.1:9'",
    )  # fmt: skip
    assert plan.config.dns.ttl_s == 30
    assert plan_for(stack, stack.config).changes == ()  # the same file: nothing to say


def test_a_restart_only_setting_given_on_the_command_line_is_not_the_files(
    make_stack: MakeStack, make_config: MakeConfig
) -> None:
    stack = make_stack()
    new = make_config(base=BASE_TOML.replace("ttl_s = 30", "ttl_s = 30\nport = 5354\nworkers = 3"))
    plan = plan_reload(stack.state.config, new, stack.state.regions, source="traffic.toml",
                       following_control=False, from_command_line={"port"})  # fmt: skip
    assert plan.restart_needed == ("[dns] workers 0 -> 3",)  # --port decides the port
    assert plan.config.dns.port == 53  # still the running value, as for any restart-only key
    assert plan.changes == ()


def test_a_file_without_regions_is_refused_unless_following_the_control_plane(
    make_stack: MakeStack, make_config: MakeConfig
) -> None:
    stack = make_stack()
    bare = BASE_TOML[: BASE_TOML.index("[[region]]")]
    with pytest.raises(ConfigError, match=r"traffic\.toml has no \[\[region\]\]"):
        plan_for(stack, make_config(base=bare))
    plan = plan_for(stack, make_config(base=bare), following_control=True)
    assert plan.regions == ()  # the old file's regions go; the next poll brings the listed ones


def test_regions_from_the_control_plane_stay_across_a_reload(make_config: MakeConfig) -> None:
    old = make_config().regions
    node = Node("eu-west-9", "eu-central", None, None, "http://127.0.0.1:9/healthz")
    clash = dataclasses.replace(node, name="us-east-1")
    listed = Region("eu-central", 50.1, 8.7, (node, clash))
    serving = (*old, listed)
    new = tuple(r for r in old if r.name != "ap-south")
    after = region_map_after(old, new, serving)
    # The file's regions as now written, then the listed one less the node name the file uses.
    assert [r.name for r in after] == ["us-east", "eu-west", "eu-central"]
    assert after[-1].nodes == (node,)
    gone = region_map_after(old, new, (*old, dataclasses.replace(listed, nodes=(clash,))))
    assert [r.name for r in gone] == ["us-east", "eu-west"]


def test_reloads_are_counted_by_result(make_stack: MakeStack) -> None:
    stack = make_stack()
    reloads = ReloadStats()
    reloads.count("ok")
    reloads.count("failed")
    reloads.count("failed")
    collector = DnsCollector(stack.authority.stats, stack.state, reloads=reloads)
    (family,) = [m for m in collector.collect() if m.name == "edge_dns_config_reloads"]
    assert {s.labels["result"]: s.value for s in family.samples if s.name.endswith("_total")} == {
        "ok": 1, "failed": 2,
    }  # fmt: skip


def test_a_file_that_cannot_be_read_is_a_config_error(tmp_path: Path) -> None:
    # What SIGHUP meets when traffic.toml is mid-replacement or was saved in another encoding:
    # an error naming the file, which the reload logs and counts, never a crash.
    with pytest.raises(ConfigError, match=r"traffic\.toml: not valid TOML: not UTF-8"):
        (tmp_path / "traffic.toml").write_bytes(b'[dns]\nzone = "\xff"\n')
        load_traffic_config(tmp_path / "traffic.toml")
    with pytest.raises(ConfigError, match=r"dir\.toml: cannot read: Is a directory"):
        (tmp_path / "dir.toml").mkdir()
        load_traffic_config(tmp_path / "dir.toml")
    with pytest.raises(ConfigError, match=r"gone\.toml: file not found"):
        load_traffic_config(tmp_path / "gone.toml")


# --- One snapshot per query --------------------------------------------------------------------


class MidQuery:
    """The geo database, running `change` at its first lookup: the lookup steering makes for a
    query it has no cached answer for, after the query read its zone and the region statuses
    and before it reads the chosen region's addresses. A reload or a new map from the control
    plane landing there, without threads or timing."""

    def __init__(self, geo: GeoSource, change: Callable[[], object]) -> None:
        self.geo = geo
        self.change: Callable[[], object] | None = change

    def locate(self, addr: IPAddress) -> GeoHit:
        change, self.change = self.change, None
        if change is not None:
            change()
        return self.geo.locate(addr)


def ttl_and_addresses(stack: Stack) -> tuple[int | None, set[str]]:
    reply = ask(stack, query(ecs=LONDON_ECS))
    return (reply.answer[0].ttl if reply.answer else None), addresses(reply)


def test_a_query_answers_from_one_configuration_across_a_reload(
    make_config: MakeConfig, city_db: GeoDB
) -> None:
    old = make_config()
    moved = BASE_TOML.replace('"192.0.2.11"', '"192.0.2.111"').replace("ttl_s = 30", "ttl_s = 7")
    new = make_config(base=moved.replace('"192.0.2.12"', '"192.0.2.112"'))
    before, after = ttl_and_addresses(Stack(old, city_db)), ttl_and_addresses(Stack(new, city_db))
    assert before == (30, EU_WEST) and after == (7, {"192.0.2.111", "192.0.2.112"})

    geo = MidQuery(city_db, lambda: reload(stack, new))
    stack = Stack(old, geo)
    # The reload landed mid-query: all of the configuration the query started on (not the old
    # TTL with the new addresses, as when the zone did not hold the region map).
    assert ttl_and_addresses(stack) == before
    assert geo.change is None  # the reload did land mid-query
    assert ttl_and_addresses(stack) == after  # and the answer raced is not served again


def test_a_query_answers_from_one_region_map_across_a_control_plane_change(
    make_config: MakeConfig, city_db: GeoDB
) -> None:
    config = make_config()
    without_eu = tuple(r for r in config.regions if r.name != "eu-west")
    listed = Stack(config, city_db)
    listed.state.set_regions(without_eu)
    before, after = ttl_and_addresses(Stack(config, city_db)), ttl_and_addresses(listed)
    assert before == (30, EU_WEST) and after == (30, {"192.0.2.1"})  # next nearest: us-east

    geo = MidQuery(city_db, lambda: stack.state.set_regions(without_eu))
    stack = Stack(config, geo)
    # Steered to eu-west over the old map, the region is gone from the new one: an empty
    # answer when the addresses came from the new map.
    assert ttl_and_addresses(stack) == before
    assert geo.change is None
    assert ttl_and_addresses(stack) == after
