import ipaddress

import pytest

from edge.traffic.regions import IPAddress, IPNetwork
from edge.traffic.steering import (
    SCOPE_LOOKUP_BUDGET,
    GeoHit,
    Location,
    RegionStatus,
    Steerer,
    bucket,
    choose,
    great_circle_km,
    quantize_share,
    single_answer,
)

from .conftest import MakeConfig, MakeStack

ALL_UP = {n: RegionStatus(True) for n in ("us-east", "eu-west", "ap-south")}
ORDER = ("eu-west", "us-east", "ap-south")


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


# --- order --------------------------------------------------------------------------------------


def test_great_circle_london_to_new_york() -> None:
    assert great_circle_km(51.5074, -0.1278, 40.7128, -74.0060) == pytest.approx(5570, rel=0.01)


@pytest.mark.parametrize(
    ("addr", "order"),
    [
        ("81.2.69.142", ("eu-west", "us-east", "ap-south")),  # London
        ("2.125.160.216", ("eu-west", "us-east", "ap-south")),  # UK
        ("89.160.20.112", ("eu-west", "ap-south", "us-east")),  # Sweden
        ("2001:218::1", ("ap-south", "eu-west", "us-east")),  # Japan
    ],
)
def test_nearest_region_by_great_circle(
    make_stack: MakeStack, addr: str, order: tuple[str]
) -> None:
    assert make_stack().steerer.order(ip(addr))[0] == order


@pytest.mark.parametrize("addr", ["10.1.2.3", "127.0.0.1", "192.168.1.1", "::1", "fd00::1"])
def test_private_addresses_get_the_default_order(make_stack: MakeStack, addr: str) -> None:
    stack = make_stack('[steering]\ndefault = ["ap-south", "eu-west"]\n')
    order, network = stack.steerer.order(ip(addr))
    assert order == ("ap-south", "eu-west", "us-east")  # unlisted regions follow in config order
    assert ip(addr) in network


def test_unknown_public_address_gets_the_default_order(make_stack: MakeStack) -> None:
    # 8.8.8.8 is not in the MaxMind test DB.
    assert make_stack().steerer.order(ip("8.8.8.8"))[0] == ("us-east", "eu-west", "ap-south")


def test_overrides_precedence_cidr_then_country_then_continent(make_stack: MakeStack) -> None:
    stack = make_stack(
        """
[steering.continent]
EU = ["us-east"]
[steering.country]
GB = ["ap-south"]
[steering.cidr]
"81.2.69.0/24" = ["us-east", "ap-south"]
"81.2.69.142/32" = ["eu-west", "ap-south"]
"10.0.0.0/8" = ["ap-south"]
"""
    )
    order = stack.steerer.order
    assert order(ip("81.2.69.142"))[0] == ("eu-west", "ap-south", "us-east")  # longest CIDR
    assert order(ip("81.2.69.143"))[0][:2] == ("us-east", "ap-south")  # the /24
    assert order(ip("2.125.160.216"))[0][0] == "ap-south"  # GB country beats EU continent
    assert order(ip("89.160.20.112"))[0] == ("us-east", "eu-west", "ap-south")  # SE: continent,
    # then the rest nearest first
    assert order(ip("10.9.9.9"))[0][0] == "ap-south"  # CIDR overrides apply to private space too


def test_order_network_does_not_straddle_an_override(make_stack: MakeStack) -> None:
    stack = make_stack('[steering.cidr]\n"81.2.69.142/32" = ["ap-south"]\n')
    order, network = stack.steerer.order(ip("81.2.69.143"))
    assert order[0] == "eu-west" and network == net("81.2.69.143/32")


# --- choose -------------------------------------------------------------------------------------


SUBNET = net("81.2.69.0/24")


def test_choose_first_healthy() -> None:
    status = {**ALL_UP, "eu-west": RegionStatus(False)}
    assert choose(ORDER, status, SUBNET).region == "us-east"  # type: ignore[union-attr]


def test_choose_fails_open_to_the_nearest_when_all_are_down() -> None:
    status = {n: RegionStatus(False) for n in ORDER}
    choice = choose(ORDER, status, SUBNET)
    assert choice is not None and choice.region == "eu-west" and not choice.hashed


def test_weight_zero_is_a_last_resort() -> None:
    status = {**ALL_UP, "eu-west": RegionStatus(True, weight=0)}
    assert choose(ORDER, status, SUBNET).region == "us-east"  # type: ignore[union-attr]
    status = {
        "eu-west": RegionStatus(True, weight=0),
        "us-east": RegionStatus(False),
        "ap-south": RegionStatus(False),
    }
    assert choose(ORDER, status, SUBNET).region == "eu-west"  # type: ignore[union-attr]


def test_fully_drained_is_skipped_but_beats_dead_regions() -> None:
    status = {**ALL_UP, "eu-west": RegionStatus(True, share=0.0)}
    assert choose(ORDER, status, SUBNET).region == "us-east"  # type: ignore[union-attr]
    status = {"eu-west": RegionStatus(True, share=0.0), "us-east": RegionStatus(False)}
    assert choose(ORDER, status, SUBNET).region == "eu-west"  # type: ignore[union-attr]


def test_choose_with_no_candidates_is_none() -> None:
    assert choose(ORDER, {}, SUBNET) is None


def test_drain_share_keeps_that_fraction_of_subnets_stably() -> None:
    share = 0.3
    status = {**ALL_UP, "eu-west": RegionStatus(True, share=share)}
    subnets = [ipaddress.ip_network((f"81.{i // 256}.{i % 256}.0", 24)) for i in range(2000)]
    kept = [s for s in subnets if choose(ORDER, status, s).region == "eu-west"]  # type: ignore[union-attr]
    assert len(kept) / len(subnets) == pytest.approx(share, abs=0.04)
    # Deterministic: same subnet, same answer; the decision is exactly the bucket threshold.
    for s in subnets[:200]:
        choice = choose(ORDER, status, s)
        assert choice is not None and choice.hashed
        assert (choice.region == "eu-west") == (bucket(s, "eu-west") < share)
        assert choose(ORDER, status, s) == choice


def test_a_canary_region_gets_its_weight_of_the_clients_nearest_to_it() -> None:
    # Weight 10: eu-west serves a stable tenth of the subnets it is nearest to; the rest go on
    # to the next region in their order, and combine with a drain as share x weight.
    subnets = [ipaddress.ip_network((f"81.{i // 256}.{i % 256}.0", 24)) for i in range(2000)]

    def kept(status: dict[str, RegionStatus]) -> list[IPNetwork]:
        return [s for s in subnets if choose(ORDER, status, s).region == "eu-west"]  # type: ignore[union-attr]

    canary = kept({**ALL_UP, "eu-west": RegionStatus(True, weight=10)})
    assert len(canary) / len(subnets) == pytest.approx(0.10, abs=0.02)
    assert all(bucket(s, "eu-west") < 0.10 for s in canary)
    others = {choose(ORDER, {**ALL_UP, "eu-west": RegionStatus(True, weight=10)}, s).region  # type: ignore[union-attr]
              for s in subnets if s not in canary}
    assert others == {"us-east"}
    halved = kept({**ALL_UP, "eu-west": RegionStatus(True, weight=10, share=0.5)})
    assert set(halved) <= set(canary)
    assert len(halved) / len(subnets) == pytest.approx(0.05, abs=0.015)


def test_drain_never_moves_clients_back_as_the_share_falls() -> None:
    # A client sent away at share s stays away at any lower share: no flapping during a ramp.
    subnets = [ipaddress.ip_network((f"2.{i // 256}.{i % 256}.0", 24)) for i in range(300)]
    kept_before = set(subnets)
    for share in (0.9, 0.7, 0.5, 0.2, 0.0):
        status = {**ALL_UP, "eu-west": RegionStatus(True, share=share)}
        kept = {s for s in subnets if choose(ORDER, status, s).region == "eu-west"}  # type: ignore[union-attr]
        assert kept <= kept_before
        kept_before = kept
    assert kept_before == set()


def test_single_answer() -> None:
    assert single_answer({"a": RegionStatus(True)}) == "a"
    assert single_answer({"a": RegionStatus(True), "b": RegionStatus(False)}) == "a"
    assert single_answer({"a": RegionStatus(True), "b": RegionStatus(True)}) is None
    assert single_answer({"a": RegionStatus(True, share=0.5), "b": RegionStatus(False)}) is None
    assert single_answer({"a": RegionStatus(False), "b": RegionStatus(False)}) is None
    assert single_answer({"a": RegionStatus(True, weight=0), "b": RegionStatus(False)}) == "a"
    assert single_answer({"a": RegionStatus(True, share=0), "b": RegionStatus(False)}) == "a"


# --- ECS scope ----------------------------------------------------------------------------------

LONDON = Location("GB", "EU", 51.5, -0.12)
PARIS = Location("FR", "EU", 48.86, 2.35)
TOKYO = Location("JP", "AS", 35.68, 139.75)


class FakeGeo:
    """A geo DB from a list of networks; gaps answer with the widest network free of entries."""

    def __init__(self, entries: dict[str, Location]) -> None:
        self.entries = {ipaddress.ip_network(k): v for k, v in entries.items()}
        self.lookups = 0

    def locate(self, addr: IPAddress) -> GeoHit:
        self.lookups += 1
        for network, loc in self.entries.items():
            if addr in network:
                return GeoHit(loc, network)
        gap = ipaddress.ip_network((addr, 0), strict=False)
        while any(n.version == gap.version and n.subnet_of(gap) for n in self.entries):  # type: ignore[arg-type]
            gap = ipaddress.ip_network((addr, gap.prefixlen + 1), strict=False)
        return GeoHit(None, gap)


def steerer(make_config: MakeConfig, geo: FakeGeo) -> Steerer:
    config = make_config()
    return Steerer(config.regions, config.steering, geo)


def test_scope_widens_over_neighbours_with_the_same_answer(make_config: MakeConfig) -> None:
    geo = FakeGeo(
        {
            "1.0.0.0/24": LONDON,
            "1.0.1.0/25": PARIS,  # a different place, the same answer: merged
            "1.0.1.128/25": LONDON,
            "1.0.2.0/23": TOKYO,
        }
    )
    answer = steerer(make_config, geo).answer(net("1.0.0.0/24"), ALL_UP)
    assert answer is not None and answer.region == "eu-west" and answer.scope_prefix == 23


def test_scope_never_covers_a_different_answer(make_config: MakeConfig) -> None:
    geo = FakeGeo({"1.0.0.0/24": LONDON, "1.0.1.7/32": TOKYO})
    s = steerer(make_config, geo)
    answer = s.answer(net("1.0.0.0/24"), ALL_UP)
    assert answer is not None and answer.scope_prefix == 24
    # Exhaustive check of the claim for a small space: every address in the scope agrees
    # (each asked of a fresh steerer, so the answer cache cannot vouch for itself).
    scope = ipaddress.ip_network(("1.0.0.0", answer.scope_prefix), strict=False)
    for a in list(scope)[:: max(1, scope.num_addresses // 256)]:
        fresh = steerer(make_config, geo)
        assert fresh.answer(ipaddress.ip_network((a, 32)), ALL_UP).region == "eu-west"  # type: ignore[union-attr]


def test_scope_search_is_bounded(make_config: MakeConfig) -> None:
    # The sibling /24 is split into 256 /32s with the same answer: too many to check in budget.
    entries = {"1.0.0.0/24": LONDON} | {f"1.0.1.{i}/32": LONDON for i in range(256)}
    geo = FakeGeo(entries)
    answer = steerer(make_config, geo).answer(net("1.0.0.0/24"), ALL_UP)
    assert answer is not None and answer.scope_prefix == 24  # gave up widening: safe
    assert geo.lookups <= SCOPE_LOOKUP_BUDGET + 1


def test_scope_is_zero_when_one_region_serves_everyone(make_config: MakeConfig) -> None:
    geo = FakeGeo({"1.0.0.0/24": LONDON})
    status = {**ALL_UP, "eu-west": RegionStatus(False), "ap-south": RegionStatus(False)}
    answer = steerer(make_config, geo).answer(net("1.0.0.0/24"), status)
    assert answer is not None and answer.region == "us-east" and answer.scope_prefix == 0


def test_scope_is_the_subnet_when_the_drain_hash_decides(make_config: MakeConfig) -> None:
    geo = FakeGeo({"1.0.0.0/16": LONDON})
    status = {**ALL_UP, "eu-west": RegionStatus(True, share=0.5)}
    answer = steerer(make_config, geo).answer(net("1.0.3.0/24"), status)
    assert answer is not None and answer.scope_prefix == 24


def test_scope_from_the_maxmind_test_db(make_stack: MakeStack) -> None:
    s = make_stack().steerer
    london = s.answer(net("81.2.69.142/32"), ALL_UP)
    assert london is not None and london.region == "eu-west" and london.scope_prefix == 31
    japan = s.answer(net("2001:218::/48"), ALL_UP)
    assert japan is not None and japan.region == "ap-south" and japan.scope_prefix == 32


def test_answer_cache_serves_the_whole_scope_without_lookups(make_config: MakeConfig) -> None:
    geo = FakeGeo({"1.0.0.0/24": LONDON, "1.0.1.0/24": LONDON, "1.0.2.0/23": TOKYO})
    s = steerer(make_config, geo)
    first = s.answer(net("1.0.0.0/24"), ALL_UP)
    assert first is not None and first.scope_prefix == 23
    lookups = geo.lookups
    inside = s.answer(net("1.0.1.77/32"), ALL_UP)
    assert inside == first and geo.lookups == lookups
    # A query without ECS gets the region and no scope, from the same entry.
    plain = s.answer(net("1.0.1.0/24"), ALL_UP, scope=False)
    assert plain is not None and (plain.region, plain.scope_prefix) == ("eu-west", 0)
    assert geo.lookups == lookups
    # Outside the scope: computed afresh.
    tokyo = s.answer(net("1.0.2.0/24"), ALL_UP)
    assert tokyo is not None and tokyo.region == "ap-south" and geo.lookups > lookups


def test_answer_cache_never_outlives_a_status_change(make_config: MakeConfig) -> None:
    geo = FakeGeo({"1.0.0.0/24": LONDON})
    s = steerer(make_config, geo)
    assert s.answer(net("1.0.0.0/24"), ALL_UP).region == "eu-west"  # type: ignore[union-attr]
    down = {**ALL_UP, "eu-west": RegionStatus(False)}
    moved = s.answer(net("1.0.0.0/24"), down)
    assert moved is not None and moved.region != "eu-west"
    assert s.answer(net("1.0.0.0/24"), ALL_UP).region == "eu-west"  # type: ignore[union-attr]


def test_drain_shares_are_quantized_to_one_percent() -> None:
    assert quantize_share(0.12345) == 0.12 and quantize_share(0.996) == 1.0
