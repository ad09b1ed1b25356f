"""Which region answers a client: pure functions of the address, the geo DB, health and drains.

Order (best first) for a client address:
  CIDR override (longest prefix) > country override > continent override > nearest region by
  great-circle distance from the geo DB location. Special-use addresses (private, loopback,
  documentation...) and addresses the DB does not locate get `steering.default`. Regions an
  override does not list follow it, nearest first when the location is known.

`choose` walks that order and takes the first usable region. A region keeps the fraction
`drain share * weight / 100` of the clients steered to it; which clients is decided by a hash
of (client subnet, region), so one resolver always gets the same answer for the same state and
tests can predict it. Weight 0 is a standby used only as a last resort, and when every region
is down we answer anyway (fail open): a possibly dead region beats no answer.

ECS scope (RFC 7871): the answer for a client is valid for the widest prefix around it over
which the answer is the same. `Steerer.order` returns, with the order, the network over which
its inputs cannot change: the geo DB network of the address (the mmdb tree leaf, from
`get_with_prefix_len`), narrowed so it does not straddle a CIDR override or a special-use
range. `Steerer.answer` then widens that network one bit at a time while the sibling half
gives the same answer, checking a sibling by looking up its first address and, when the DB
network found there is narrower than the sibling, the rest of the sibling piece by piece.
Every lookup spends from a fixed budget (`SCOPE_LOOKUP_BUDGET`); when it runs out we stop
widening, which only makes the scope narrower (safe, costs resolver cache hits).
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from edge.traffic.regions import IPAddress, IPNetwork, Region, Steering

EARTH_RADIUS_KM = 6371.0088
SCOPE_LOOKUP_BUDGET = 64

# Addresses with no meaningful location (RFC 6890 special-use and friends).
SPECIAL_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/3",
        "::/127", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001:db8::/32",
        "fc00::/7", "fe80::/10", "ff00::/8",
    )
)  # fmt: skip


@dataclass(frozen=True)
class Location:
    country: str | None = None
    continent: str | None = None
    latitude_deg: float | None = None
    longitude_deg: float | None = None


@dataclass(frozen=True)
class GeoHit:
    """A DB record and the DB network it holds for (the whole network, not just the address)."""

    location: Location | None
    network: IPNetwork


class GeoSource(Protocol):
    def locate(self, addr: IPAddress) -> GeoHit: ...


@dataclass(frozen=True)
class RegionStatus:
    healthy: bool
    share: float = 1.0  # drain share: 1 = not draining, 0 = drained
    weight: int = 100


@dataclass(frozen=True)
class Choice:
    region: str
    hashed: bool  # the client-subnet hash took part, so the answer is specific to the subnet


@dataclass(frozen=True)
class Answer:
    region: str
    scope_prefix: int


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance; accurate to ~0.5% on the Earth, plenty to rank regions."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def bucket(subnet: IPNetwork, region: str) -> float:
    """A stable number in [0, 1) per (subnet, region). Per region, so two draining regions in a
    row make independent decisions instead of the second one seeing only the first's leftovers."""
    digest = hashlib.blake2b(f"{region}|{subnet}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _keep(s: RegionStatus) -> float:
    return s.share * s.weight / 100


def choose(
    order: Iterable[str], status: Mapping[str, RegionStatus], subnet: IPNetwork
) -> Choice | None:
    """First usable region of `order` among those in `status`; None if `status` is empty."""
    candidates = [r for r in order if r in status]
    hashed = False
    for name in candidates:
        s = status[name]
        keep = _keep(s)
        if not s.healthy or keep <= 0:
            continue
        if keep >= 1:
            return Choice(name, hashed)
        hashed = True
        if bucket(subnet, name) < keep:
            return Choice(name, True)
    last_resorts = (
        lambda s: s.healthy and s.weight == 0 and s.share > 0,  # standby
        lambda s: s.healthy,  # drained but alive beats dead
        lambda s: True,  # fail open: the nearest, even if down
    )
    for usable in last_resorts:
        for name in candidates:
            if usable(status[name]):
                return Choice(name, hashed)
    return None


def single_answer(status: Mapping[str, RegionStatus]) -> str | None:
    """The region every client gets, if the answer does not depend on the client at all.

    Holds because every order lists every region: with exactly one candidate in the first
    non-empty tier of `choose`, every walk ends there."""
    if any(s.healthy and 0 < _keep(s) < 1 for s in status.values()):
        return None
    tiers = (
        [n for n, s in status.items() if s.healthy and _keep(s) >= 1],
        [n for n, s in status.items() if s.healthy and s.weight == 0 and s.share > 0],
        [n for n, s in status.items() if s.healthy],
        list(status),
    )
    for tier in tiers:
        if tier:
            return tier[0] if len(tier) == 1 else None
    return None


Boundary = tuple[int, int]  # (prefix length, network address as an int)


def _boundaries(networks: Iterable[IPNetwork]) -> dict[int, tuple[Boundary, ...]]:
    """By IP version, as integers: `order` runs dozens of times per new client subnet (scope
    widening), and ipaddress containment tests cost microseconds each."""
    out: dict[int, list[Boundary]] = {4: [], 6: []}
    for n in networks:
        out[n.version].append((n.prefixlen, int(n.network_address)))
    return {v: tuple(b) for v, b in out.items()}


def _narrow(addr: IPAddress, net: IPNetwork, boundaries: tuple[Boundary, ...]) -> IPNetwork:
    """Shrink `net` (around `addr`) until no boundary network lies strictly inside it, so every
    address in the result has the same longest-match among the boundaries."""
    bits = net.max_prefixlen
    value = int(net.network_address)
    prefix = net.prefixlen
    while prefix < bits:
        shift = bits - prefix
        if not any(p > prefix and b >> shift == value >> shift for p, b in boundaries):
            break
        prefix += 1
        value = (int(addr) >> (bits - prefix)) << (bits - prefix)
    if prefix == net.prefixlen:
        return net
    return ipaddress.ip_network((addr, prefix), strict=False)


def _special(addr: IPAddress, special: tuple[Boundary, ...]) -> int | None:
    """The prefix length of the widest special-use network holding `addr`, if any."""
    bits, value = addr.max_prefixlen, int(addr)
    hits = [p for p, b in special if value >> (bits - p) == b >> (bits - p)]
    return min(hits) if hits else None


ANSWER_CACHE_ENTRIES = 65536
TAIL_CACHE_ENTRIES = 65536  # distinct DB locations (city coordinates)


class _AnswerCache:
    """Answers by (status, scope network). An answer is valid for every address of its scope
    network, so one widening serves every later query from inside it: a lookup tries each
    prefix length of the client address, as integers, which costs microseconds where the
    widening costs milliseconds. Cleared whole when full, and keyed by the status, so a change
    of health, weight or drain share never serves a stale answer."""

    def __init__(self) -> None:
        self._entries: dict[tuple[object, int, int, int], Answer] = {}

    def get(self, key: object, subnet: IPNetwork) -> Answer | None:
        bits = subnet.max_prefixlen
        value = int(subnet.network_address)
        entries = self._entries
        for prefix in range(subnet.prefixlen, -1, -1):
            hit = entries.get((key, subnet.version, prefix, value >> (bits - prefix)))
            if hit is not None:
                return hit
        return None

    def clear(self) -> None:
        self._entries.clear()

    def put(self, key: object, subnet: IPNetwork, answer: Answer) -> None:
        if answer.scope_prefix > subnet.prefixlen:
            return  # valid only for part of the subnet: not reusable for the whole of it
        if len(self._entries) >= ANSWER_CACHE_ENTRIES:
            self._entries.clear()
        bits = subnet.max_prefixlen
        prefix = answer.scope_prefix
        shifted = int(subnet.network_address) >> (bits - prefix)
        self._entries[(key, subnet.version, prefix, shifted)] = answer


def _status_key(status: Mapping[str, RegionStatus]) -> object:
    return tuple(sorted(status.items()))


def quantize_share(share: float) -> float:
    """Drain shares in steps of 1%: answers stay cacheable while a ramp moves, and a client's
    side still changes at most once per step."""
    return round(share * 100) / 100


@dataclass(frozen=True)
class _RegionView:
    """A region map with the caches computed from it, swapped as one: a query that started on
    the old map fills the old caches, never the new ones."""

    regions: tuple[Region, ...]
    tails: dict[tuple[float, float] | None, list[str]]
    cache: _AnswerCache


class Steerer:
    def __init__(self, regions: tuple[Region, ...], steering: Steering, geo: GeoSource) -> None:
        self._view = _RegionView(regions, {}, _AnswerCache())
        self._steering = steering
        self._geo = geo
        self._countries = dict(steering.by_country)
        self._continents = dict(steering.by_continent)
        self._boundaries = _boundaries((*(n for n, _ in steering.by_cidr), *SPECIAL_NETWORKS))
        self._special = _boundaries(SPECIAL_NETWORKS)

    @property
    def regions(self) -> tuple[Region, ...]:
        """The region map this steerer steers over, fixed for its life (see `over`)."""
        return self._view.regions

    def forget(self) -> None:
        """Drop cached answers: the geo database under them changed."""
        self._view.cache.clear()

    def over(self, regions: tuple[Region, ...]) -> Steerer:
        """The same rules over another region map, with empty caches. A new object rather
        than a change to this one: a query holding this steerer (dns.Zone) keeps steering
        over the map its zone was built with."""
        other = copy.copy(self)
        other._view = _RegionView(regions, {}, _AnswerCache())
        return other

    def _override(self, addr: IPAddress, loc: Location | None) -> tuple[str, ...] | None:
        for net, order in self._steering.by_cidr:
            if addr in net:
                return order
        if loc is not None and loc.country in self._countries:
            return self._countries[loc.country]
        if loc is not None and loc.continent in self._continents:
            return self._continents[loc.continent]
        return None

    def _tail(self, view: _RegionView, loc: Location | None) -> list[str]:
        """All regions, nearest first when the location is known, else in default order."""
        key = None
        if loc is not None and loc.latitude_deg is not None and loc.longitude_deg is not None:
            key = (loc.latitude_deg, loc.longitude_deg)
        tails = view.tails
        tail = tails.get(key)
        if tail is None:
            if len(tails) >= TAIL_CACHE_ENTRIES:
                tails.clear()
            tail = tails[key] = self._sorted_tail(view.regions, loc)
        return tail

    def _sorted_tail(self, regions: tuple[Region, ...], loc: Location | None) -> list[str]:
        if loc is not None and loc.latitude_deg is not None and loc.longitude_deg is not None:
            lat, lon = loc.latitude_deg, loc.longitude_deg
            return [
                r.name
                for r in sorted(
                    regions,
                    key=lambda r: great_circle_km(lat, lon, r.latitude_deg, r.longitude_deg),
                )
            ]
        default = list(self._steering.default)
        return default + [r.name for r in regions if r.name not in default]

    def order(
        self, addr: IPAddress, view: _RegionView | None = None
    ) -> tuple[tuple[str, ...], IPNetwork]:
        """Regions best first for `addr`, and the network around it with the same order."""
        special = _special(addr, self._special[addr.version])
        if special is not None:
            loc, net = None, ipaddress.ip_network((addr, special), strict=False)
        else:
            hit = self._geo.locate(addr)
            loc, net = hit.location, hit.network
        net = _narrow(addr, net, self._boundaries[addr.version])
        head = list(self._override(addr, loc) or ())
        order = head + [r for r in self._tail(view or self._view, loc) if r not in head]
        return tuple(order), net

    def answer(
        self, subnet: IPNetwork, status: Mapping[str, RegionStatus], *, scope: bool = True
    ) -> Answer | None:
        """The region for a client subnet and the ECS scope prefix it is valid for. Without
        `scope` (a query with no ECS option) the prefix is not computed and is 0."""
        view = self._view
        key = _status_key(status)
        cached = view.cache.get(key, subnet)
        if cached is not None:
            return cached if scope else Answer(cached.region, 0)
        answer = self._answer(view, subnet, status, scope)
        if answer is not None and scope:
            view.cache.put(key, subnet, answer)
        return answer

    def _answer(
        self, view: _RegionView, subnet: IPNetwork, status: Mapping[str, RegionStatus],
        scope: bool,
    ) -> Answer | None:
        addr = subnet.network_address
        order, net = self.order(addr, view)
        choice = choose(order, status, subnet)
        if choice is None:
            return None
        if single_answer(status) is not None:
            return Answer(choice.region, 0)
        if choice.hashed:
            return Answer(choice.region, max(subnet.prefixlen, net.prefixlen))
        if not scope:
            return Answer(choice.region, 0)
        budget = [SCOPE_LOOKUP_BUDGET]
        while net.prefixlen > 0:
            parent = net.supernet()
            sibling = next(s for s in parent.subnets() if s != net)
            if not self._uniform(view, sibling, choice.region, status, budget):
                break
            net = parent
        return Answer(choice.region, net.prefixlen)

    def _uniform(
        self, view: _RegionView, net: IPNetwork, region: str,
        status: Mapping[str, RegionStatus], budget: list[int],
    ) -> bool:
        """True if every address in `net` gets `region` without the hash deciding."""
        if budget[0] <= 0:
            return False
        budget[0] -= 1
        order, valid = self.order(net.network_address, view)
        choice = choose(order, status, net)
        if choice is None or choice.hashed or choice.region != region:
            return False
        if valid.prefixlen <= net.prefixlen:
            return True
        rest = net.address_exclude(valid)  # type: ignore[arg-type]
        return all(self._uniform(view, part, region, status, budget) for part in rest)
