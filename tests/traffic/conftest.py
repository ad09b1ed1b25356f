"""Factories for the traffic tests: configs from TOML text, a steerer on the MaxMind test DB."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.traffic.dns import Authority
from edge.traffic.geodb import GeoDB
from edge.traffic.regions import TrafficConfig, parse_traffic_config
from edge.traffic.state import TrafficState
from edge.traffic.steering import GeoSource, Steerer

GEOIP = Path(__file__).resolve().parents[3] / "shared" / "geoip"
CITY_TEST_DB = GEOIP / "GeoIP2-City-Test.mmdb"

# Realistic sites: Ashburn, Dublin, Mumbai.
BASE_TOML = """
[dns]
zone = "edge.test."
hosts = ["@", "www", "api.v1"]
nameservers = ["ns1.edge.test.", "ns.example.net."]
ttl_s = 30

[[dns.glue]]
name = "ns1"
ipv4 = ["192.0.2.53"]

[health]
interval_s = 0.05
timeout_s = 0.5
rise = 2
fall = 2

[[region]]
name = "us-east"
latitude_deg = 39.04
longitude_deg = -77.49
[[region.node]]
ipv4 = "192.0.2.1"
ipv6 = "2001:db8::1"
health_url = "http://127.0.0.1:9/healthz"

[[region]]
name = "eu-west"
latitude_deg = 53.35
longitude_deg = -6.26
[[region.node]]
ipv4 = "192.0.2.11"
ipv6 = "2001:db8::11"
health_url = "http://127.0.0.1:9/healthz"
[[region.node]]
ipv4 = "192.0.2.12"
health_url = "http://127.0.0.1:9/healthz"

[[region]]
name = "ap-south"
latitude_deg = 19.08
longitude_deg = 72.88
[[region.node]]
ipv4 = "192.0.2.21"
ipv6 = "2001:db8::21"
health_url = "http://127.0.0.1:9/healthz"
"""

MakeConfig = Callable[..., TrafficConfig]


@pytest.fixture
def make_config() -> MakeConfig:
    def make(extra: str = "", base: str = BASE_TOML) -> TrafficConfig:
        return parse_traffic_config(tomllib.loads(base + extra), "traffic.toml")

    return make


@pytest.fixture(scope="session")
def city_db() -> Iterator[GeoDB]:
    db = GeoDB(CITY_TEST_DB)
    yield db
    db.close()


class Stack:
    """Config, state, steerer and authority wired as the server wires them."""

    def __init__(self, config: TrafficConfig, geo: GeoSource) -> None:
        self.config = config
        self.geo = geo
        self.state = TrafficState(config)
        self.steerer = Steerer(config.regions, config.steering, geo)
        self.authority = Authority(config, self.steerer, self.state)
        self.state.region_listeners.append(self.authority.set_regions)

    def set_node(self, name: str, up: bool, now: float = 0.0) -> None:
        h = self.state.health[name]
        for _ in range(max(h.rise, h.fall)):
            (h.check_ok if up else h.check_failed)(now)


MakeStack = Callable[..., Stack]


@pytest.fixture
def make_stack(make_config: MakeConfig, city_db: GeoDB) -> MakeStack:
    def make(extra: str = "", base: str = BASE_TOML) -> Stack:
        return Stack(make_config(extra, base), city_db)

    return make
