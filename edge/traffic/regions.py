"""`traffic.toml`: the DNS zone, health-check timing, regions with their nodes, and steering.

With `edge dns --control` the regions come from the control plane (edge/traffic/region_map.py)
and `[[region]]` may be left out; without it at least one is needed.

[dns]
zone = "edge.test."
hosts = ["@", "www"]                  # names answered with the steered region's nodes
nameservers = ["ns1.edge.test."]      # NS at the apex; the first is the SOA MNAME
ttl_s = 30
port = 53
tcp_idle_timeout_s = 10
metrics_listen = "127.0.0.1:9153"     # Prometheus /metrics over HTTP; "" (the default): none
workers = 0                           # UDP worker processes; 0 = one per usable CPU
udp_threads = 2                       # UDP sockets+threads per process (system calls overlap)

[[dns.glue]]                          # addresses for in-zone nameservers
name = "ns1.edge.test."
ipv4 = ["192.0.2.53"]

[health]
interval_s = 5.0
timeout_s = 2.0
rise = 2                              # consecutive passes to come up
fall = 3                              # consecutive failures to go down

[[region]]
name = "eu-west"
latitude_deg = 53.35
longitude_deg = -6.26
weight = 100                          # 0..100; 0 = standby, used only as a last resort

[[region.node]]
name = "eu-west-1"                    # optional; default "<region>-<n>"
ipv4 = "192.0.2.10"                   # ipv4 and/or ipv6
ipv6 = "2001:db8::10"
health_url = "http://192.0.2.10:8080/healthz"

[steering]
default = ["us-east", "eu-west"]      # for private/unknown addresses; others follow
[steering.continent]                  # continent code -> ordered regions
OC = ["ap-south"]
[steering.country]                    # ISO 3166 alpha-2 -> ordered regions
IE = ["eu-west"]
[steering.cidr]                       # network -> ordered regions (longest prefix wins)
"198.51.100.0/24" = ["eu-west"]
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.name

from edge.config.listen import check_listen
from edge.config.toml_fields import Table, load_toml
from edge.errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

REGION_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
CONTINENTS = ("AF", "AN", "AS", "EU", "NA", "OC", "SA")
MAX_TTL_S = 86_400
MAX_WORKERS = 256
MAX_UDP_THREADS = 64


@dataclass(frozen=True)
class Node:
    name: str
    region: str
    ipv4: ipaddress.IPv4Address | None
    ipv6: ipaddress.IPv6Address | None
    health_url: str


@dataclass(frozen=True)
class Region:
    name: str
    latitude_deg: float
    longitude_deg: float
    nodes: tuple[Node, ...]
    weight: int = 100

    def has_family(self, version: int) -> bool:
        return any((n.ipv4 if version == 4 else n.ipv6) is not None for n in self.nodes)


@dataclass(frozen=True)
class Steering:
    """Overrides as ordered region lists; CIDR entries are sorted longest prefix first."""

    default: tuple[str, ...]
    by_continent: tuple[tuple[str, tuple[str, ...]], ...] = ()
    by_country: tuple[tuple[str, tuple[str, ...]], ...] = ()
    by_cidr: tuple[tuple[IPNetwork, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Glue:
    name: dns.name.Name
    ipv4: tuple[ipaddress.IPv4Address, ...]
    ipv6: tuple[ipaddress.IPv6Address, ...]


@dataclass(frozen=True)
class DnsConfig:
    zone: dns.name.Name
    hosts: tuple[dns.name.Name, ...]
    nameservers: tuple[dns.name.Name, ...]
    glue: tuple[Glue, ...] = ()
    ttl_s: int = 30
    soa_serial: int = 1
    port: int = 53
    tcp_idle_timeout_s: float = 10.0
    # Our own EDNS UDP payload ceiling: 1232 avoids IP fragmentation (DNS flag day 2020).
    max_udp_payload_bytes: int = 1232
    metrics_listen: str = ""  # HOST:PORT of the /metrics HTTP listener; "" = none
    workers: int = 0  # 0: one per CPU this process may run on
    udp_threads: int = 2


@dataclass(frozen=True)
class HealthConfig:
    interval_s: float = 5.0
    timeout_s: float = 2.0
    rise: int = 2
    fall: int = 3


@dataclass(frozen=True)
class TrafficConfig:
    dns: DnsConfig
    health: HealthConfig
    regions: tuple[Region, ...]
    steering: Steering

    def region(self, name: str) -> Region:
        for r in self.regions:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(n for r in self.regions for n in r.nodes)


def _name(table: Table, key: str, value: str, origin: dns.name.Name | None) -> dns.name.Name:
    try:
        if origin is not None and value == "@":
            return origin
        return dns.name.from_text(value, origin=origin)
    except dns.exception.DNSException as e:
        raise ConfigError(f"{table.where(key)}: not a valid DNS name {value!r}: {e}") from None


def _strings(table: Table, key: str, default: list[str] | None = None) -> list[str]:
    value = table.get(key, list, default if default is not None else [])
    if not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{table.where(key)} must be a list of strings")
    return value


def _float_in(table: Table, key: str, low: float, high: float, default: float | None) -> float:
    value = table.require(key, float) if default is None else table.get(key, float, default)
    if not low <= value <= high:
        raise ConfigError(f"{table.where(key)} must be between {low} and {high}, got {value}")
    return value


def _parse_dns(root: Table) -> DnsConfig:
    t = root.table("dns")
    t.reject_unknown(
        {
            "zone",
            "hosts",
            "nameservers",
            "glue",
            "ttl_s",
            "soa_serial",
            "port",
            "tcp_idle_timeout_s",
            "max_udp_payload_bytes",
            "metrics_listen",
            "workers",
            "udp_threads",
        }
    )
    zone = _name(t, "zone", t.require("zone", str), None)
    hosts = tuple(_name(t, "hosts", h, zone) for h in _strings(t, "hosts", ["@"]))
    nameservers = tuple(_name(t, "nameservers", n, zone) for n in _strings(t, "nameservers"))
    if not nameservers:
        raise ConfigError(f"{t.where('nameservers')} must name at least one nameserver")
    for name in hosts:
        if not name.is_subdomain(zone):
            raise ConfigError(f"{t.where('hosts')}: {name} is outside the zone {zone}")
    glue = []
    for g in t.tables("glue"):
        g.reject_unknown({"name", "ipv4", "ipv6"})
        gname = _name(g, "name", g.require("name", str), zone)
        if not gname.is_subdomain(zone):
            raise ConfigError(f"{g.where('name')}: glue {gname} is outside the zone {zone}")
        glue.append(
            Glue(
                gname,
                tuple(ipaddress.IPv4Address(g.ip_address("ipv4", a, 4))
                      for a in _strings(g, "ipv4")),
                tuple(ipaddress.IPv6Address(g.ip_address("ipv6", a, 6))
                      for a in _strings(g, "ipv6")),
            )
        )
    workers = t.get("workers", int, 0)
    if not 0 <= workers <= MAX_WORKERS:
        raise ConfigError(
            f"{t.where('workers')} must be between 0 and {MAX_WORKERS}, got {workers}"
        )
    port = t.get("port", int, 53)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{t.where('port')} must be between 0 and 65535, got {port}")
    return DnsConfig(
        zone=zone,
        hosts=hosts,
        nameservers=nameservers,
        glue=tuple(glue),
        ttl_s=t.positive_int("ttl_s", 30, MAX_TTL_S),
        soa_serial=t.positive_int("soa_serial", 1, 2**32 - 1),
        port=port,
        tcp_idle_timeout_s=_float_in(t, "tcp_idle_timeout_s", 0.01, 3600.0, 10.0),
        max_udp_payload_bytes=t.positive_int("max_udp_payload_bytes", 1232, 65535),
        metrics_listen=check_listen(t.get("metrics_listen", str, ""), t.where("metrics_listen")),
        workers=workers,
        udp_threads=t.positive_int("udp_threads", 2, MAX_UDP_THREADS),
    )


def _parse_region(t: Table) -> Region:
    t.reject_unknown({"name", "latitude_deg", "longitude_deg", "weight", "node"})
    name = t.require("name", str)
    if not REGION_NAME_RE.match(name):
        raise ConfigError(
            f"{t.where('name')} must be lower-case letters, digits and '-', starting with a "
            f"letter (at most 63), got {name!r}"
        )
    weight = t.get("weight", int, 100)
    if not 0 <= weight <= 100:
        raise ConfigError(f"{t.where('weight')} must be between 0 and 100, got {weight}")
    nodes = []
    for i, n in enumerate(t.tables("node")):
        n.name = f"{t.name}.node[{i}]"
        n.reject_unknown({"name", "ipv4", "ipv6", "health_url"})
        v4, v6 = n.get("ipv4", str, ""), n.get("ipv6", str, "")
        if not v4 and not v6:
            raise ConfigError(f"{n.where('ipv4')}: a node needs ipv4, ipv6 or both")
        url = n.require("health_url", str)
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{n.where('health_url')} must be an http(s) URL, got {url!r}")
        nodes.append(
            Node(
                name=n.get("name", str, f"{name}-{i + 1}"),
                region=name,
                ipv4=ipaddress.IPv4Address(n.ip_address("ipv4", v4, 4)) if v4 else None,
                ipv6=ipaddress.IPv6Address(n.ip_address("ipv6", v6, 6)) if v6 else None,
                health_url=url,
            )
        )
    if not nodes:
        raise ConfigError(f"{t.where('node')}: region {name!r} needs at least one [[region.node]]")
    return Region(
        name=name,
        latitude_deg=_float_in(t, "latitude_deg", -90.0, 90.0, None),
        longitude_deg=_float_in(t, "longitude_deg", -180.0, 180.0, None),
        nodes=tuple(nodes),
        weight=weight,
    )


def _order(table: Table, key: str, value: Any, known: tuple[str, ...]) -> tuple[str, ...]:
    """`known` empty: the regions come from the control plane, so any well-formed name goes
    (one it does not list is skipped at answer time)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
        raise ConfigError(f"{table.where(key)} must be a non-empty list of region names")
    for v in value:
        if not known and not REGION_NAME_RE.match(v):
            raise ConfigError(f"{table.where(key)}: not a region name: {v!r}")
        if known and v not in known:
            raise ConfigError(
                f"{table.where(key)}: unknown region {v!r}; regions: {', '.join(known)}"
            )
    if len(set(value)) != len(value):
        raise ConfigError(f"{table.where(key)}: a region is listed twice")
    return tuple(value)


def _parse_steering(root: Table, known: tuple[str, ...]) -> Steering:
    t = root.table("steering")
    t.reject_unknown({"default", "continent", "country", "cidr"})
    default = _order(t, "default", t.data["default"], known) if "default" in t.data else known
    continent = t.table("continent")
    for code in continent.data:
        if code not in CONTINENTS:
            raise ConfigError(
                f"{continent.where(code)}: continent must be one of {', '.join(CONTINENTS)}"
            )
    country = t.table("country")
    for code in country.data:
        if not COUNTRY_RE.match(code):
            raise ConfigError(
                f"{country.where(code)}: country must be an ISO 3166 alpha-2 code "
                "in capitals, like GB"
            )
    cidr = t.table("cidr")
    networks: list[tuple[IPNetwork, tuple[str, ...]]] = []
    for text, order in cidr.data.items():
        try:
            net = ipaddress.ip_network(text)
        except ValueError as e:
            raise ConfigError(
                f"{cidr.where(text)}: not a network (host bits must be 0): {e}"
            ) from None
        networks.append((net, _order(cidr, text, order, known)))
    networks.sort(key=lambda item: -item[0].prefixlen)
    return Steering(
        default=default,
        by_continent=tuple((k, _order(continent, k, v, known)) for k, v in continent.data.items()),
        by_country=tuple((k, _order(country, k, v, known)) for k, v in country.data.items()),
        by_cidr=tuple(networks),
    )


def parse_traffic_config(data: dict[str, Any], source: str) -> TrafficConfig:
    root = Table(data, source)
    root.reject_unknown({"dns", "health", "region", "steering"})
    dns_config = _parse_dns(root)

    h = root.table("health")
    h.reject_unknown({"interval_s", "timeout_s", "rise", "fall"})
    health = HealthConfig(
        interval_s=_float_in(h, "interval_s", 0.01, 3600.0, 5.0),
        timeout_s=_float_in(h, "timeout_s", 0.01, 600.0, 2.0),
        rise=h.positive_int("rise", 2, 100),
        fall=h.positive_int("fall", 3, 100),
    )

    # None is fine: `edge dns --control` takes the region map from the control plane.
    regions = tuple(_parse_region(t) for t in root.tables("region"))
    names = tuple(r.name for r in regions)
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: region names must be unique, got {', '.join(names)}")
    node_names = [n.name for r in regions for n in r.nodes]
    if len(set(node_names)) != len(node_names):
        raise ConfigError(f"{source}: node names must be unique across regions")
    return TrafficConfig(dns_config, health, regions, _parse_steering(root, names))


def load_traffic_config(path: Path) -> TrafficConfig:
    return parse_traffic_config(load_toml(path), str(path))
