import ipaddress
import struct

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from edge.traffic.dns import Transport
from edge.traffic.wire_cache import parse_ecs

from .conftest import BASE_TOML, MakeStack, Stack

LONDON_ECS = dns.edns.ECSOption("81.2.69.142", 32)
JAPAN_ECS = dns.edns.ECSOption("2001:218::", 32)


def query(
    name: str = "www.edge.test.",
    rdtype: str = "A",
    ecs: dns.edns.Option | None = None,
    **kw: object,
) -> dns.message.Message:
    options = [ecs] if ecs is not None else None
    if options is not None:
        kw.setdefault("use_edns", 0)
    return dns.message.make_query(name, rdtype, options=options, **kw)  # type: ignore[arg-type]


def ask_wire(
    stack: Stack, wire: bytes, transport: Transport = "udp", now: float = 0.0
) -> bytes | None:
    return stack.authority.handle(wire, "127.0.0.1", transport, now)


def ask(stack: Stack, q: dns.message.Message, transport: Transport = "udp") -> dns.message.Message:
    out = ask_wire(stack, q.to_wire(), transport)
    assert out is not None
    return dns.message.from_wire(out)


def addresses(r: dns.message.Message) -> set[str]:
    return {rd.to_text() for rrset in r.answer for rd in rrset}


def ecs_of(r: dns.message.Message) -> dns.edns.ECSOption:
    (opt,) = r.get_options(dns.edns.OptionType.ECS)
    assert isinstance(opt, dns.edns.ECSOption)
    return opt


def test_london_gets_eu_west_with_ecs_scope(make_stack: MakeStack) -> None:
    r = ask(make_stack(), query(ecs=LONDON_ECS))
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert addresses(r) == {"192.0.2.11", "192.0.2.12"}
    assert r.answer[0].ttl == 30
    echoed = ecs_of(r)
    assert (echoed.address, echoed.srclen, echoed.scopelen) == ("81.2.69.142", 32, 31)


def test_japan_aaaa_gets_ap_south(make_stack: MakeStack) -> None:
    r = ask(make_stack(), query(rdtype="AAAA", ecs=JAPAN_ECS))
    assert addresses(r) == {"2001:db8::21"} and ecs_of(r).scopelen == 32


def test_without_ecs_the_resolver_address_steers_and_no_opt_is_added(make_stack: MakeStack) -> None:
    r = ask(make_stack(), query())
    assert addresses(r) == {"192.0.2.1"}  # 127.0.0.1: default order, us-east first
    assert r.edns == -1


def test_edns_without_ecs_echoes_opt_only(make_stack: MakeStack) -> None:
    r = ask(make_stack(), query(use_edns=0, payload=4096))
    assert r.edns == 0 and r.payload == 1232 and r.options == ()


def test_down_nodes_leave_and_a_dead_region_fails_over(make_stack: MakeStack) -> None:
    stack = make_stack()
    stack.set_node("eu-west-1", up=False)
    assert addresses(ask(stack, query(ecs=LONDON_ECS))) == {"192.0.2.12"}
    stack.set_node("eu-west-2", up=False)
    assert addresses(ask(stack, query(ecs=LONDON_ECS))) == {"192.0.2.1"}
    # eu-west-2 has no IPv6, so AAAA health differs from A health; AAAA follows eu-west-1 only.
    stack.set_node("eu-west-2", up=True)
    assert addresses(ask(stack, query(rdtype="AAAA", ecs=LONDON_ECS))) == {"2001:db8::1"}


def test_drained_region_sends_clients_on(make_stack: MakeStack) -> None:
    stack = make_stack()
    stack.state.drains["eu-west"].start(0.0, over_s=0)
    r = ask(stack, query(ecs=LONDON_ECS))
    assert addresses(r) == {"192.0.2.1"}


def test_scope_zero_when_only_one_region_is_usable(make_stack: MakeStack) -> None:
    stack = make_stack()
    for node in ("eu-west-1", "eu-west-2", "ap-south-1"):
        stack.set_node(node, up=False)
    r = ask(stack, query(ecs=LONDON_ECS))
    assert addresses(r) == {"192.0.2.1"} and ecs_of(r).scopelen == 0


def test_ecs_source_zero_means_scope_zero(make_stack: MakeStack) -> None:
    r = ask(make_stack(), query(ecs=dns.edns.ECSOption("0.0.0.0", 0)))
    assert ecs_of(r).scopelen == 0 and ecs_of(r).srclen == 0


def test_apex_soa_ns_and_a(make_stack: MakeStack) -> None:
    stack = make_stack()
    soa = ask(stack, query("edge.test.", "SOA"))
    assert soa.answer[0].rdtype == dns.rdatatype.SOA and soa.flags & dns.flags.AA
    ns = ask(stack, query("edge.test.", "NS"))
    assert {rd.to_text() for rd in ns.answer[0]} == {"ns1.edge.test.", "ns.example.net."}
    assert addresses(ask(stack, query("edge.test.", "A"))) == {"192.0.2.1"}


def test_glue(make_stack: MakeStack) -> None:
    assert addresses(ask(make_stack(), query("ns1.edge.test."))) == {"192.0.2.53"}


def test_case_is_preserved(make_stack: MakeStack) -> None:
    r = ask(make_stack(), query("WwW.EDGE.test."))
    assert r.question[0].name.to_text() == "WwW.EDGE.test."
    assert addresses(r) == {"192.0.2.1"}


@pytest.mark.parametrize(
    ("name", "rdtype", "rcode"),
    [
        ("nope.edge.test.", "A", dns.rcode.NXDOMAIN),
        ("deep.www.edge.test.", "A", dns.rcode.NXDOMAIN),
        ("www.edge.test.", "MX", dns.rcode.NOERROR),  # NODATA
        ("v1.edge.test.", "A", dns.rcode.NOERROR),  # empty non-terminal above api.v1: NODATA
        ("ns1.edge.test.", "AAAA", dns.rcode.NOERROR),  # glue without IPv6: NODATA
    ],
)
def test_negative_answers_carry_the_soa(
    make_stack: MakeStack, name: str, rdtype: str, rcode: int
) -> None:
    r = ask(make_stack(), query(name, rdtype))
    assert r.rcode() == rcode and not r.answer and r.flags & dns.flags.AA
    (soa,) = r.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 30


def test_outside_the_zone_is_refused_without_aa(make_stack: MakeStack) -> None:
    r = ask(make_stack(), query("example.com."))
    assert r.rcode() == dns.rcode.REFUSED and not r.flags & dns.flags.AA and not r.answer


def test_zone_transfer_and_chaos_are_refused(make_stack: MakeStack) -> None:
    assert ask(make_stack(), query("edge.test.", "AXFR")).rcode() == dns.rcode.REFUSED
    q = dns.message.make_query("version.bind.", "TXT", "CH")
    assert ask(make_stack(), q).rcode() == dns.rcode.REFUSED


@pytest.mark.parametrize("opcode", [dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.STATUS, 7])
def test_other_opcodes_are_notimp(make_stack: MakeStack, opcode: int) -> None:
    wire = bytearray(query().to_wire())
    wire[2] = (wire[2] & 0x87) | (opcode << 3)
    out = ask_wire(make_stack(), bytes(wire))
    assert out is not None
    r = dns.message.from_wire(out)
    assert r.rcode() == dns.rcode.NOTIMP and r.opcode() == opcode
    assert r.id == struct.unpack("!H", wire[:2])[0]
    assert r.flags & dns.flags.QR


def test_badvers(make_stack: MakeStack) -> None:
    r = ask(make_stack(), query(use_edns=1))
    assert r.rcode() == dns.rcode.BADVERS and r.edns == 0 and not r.answer


def raw_ecs(family: int, source: int, scope: int, address: bytes) -> bytes:
    q = query(use_edns=0)
    q.use_edns(
        0,
        0,
        1232,
        options=[dns.edns.GenericOption(8, struct.pack("!HBB", family, source, scope) + address)],
    )
    return q.to_wire()


@pytest.mark.parametrize(
    ("family", "source", "address"),
    [
        (3, 24, b"\x51\x02\x45"),  # no such family
        (1, 33, b"\x51\x02\x45\x8e\x00"),  # source longer than an IPv4 address
        (1, 23, b"\x51\x02\x45"),  # a bit set beyond the source prefix
        (1, 24, b"\x51\x02"),  # address shorter than the source prefix needs
        (2, 129, b"\x20" * 17),
    ],
)
def test_malformed_ecs_is_formerr(
    make_stack: MakeStack, family: int, source: int, address: bytes
) -> None:
    out = ask_wire(make_stack(), raw_ecs(family, source, 0, address))
    assert out is not None and dns.message.from_wire(out).rcode() == dns.rcode.FORMERR


def test_two_ecs_options_are_formerr(make_stack: MakeStack) -> None:
    q = query(use_edns=0)
    q.use_edns(0, 0, 1232, options=[LONDON_ECS, JAPAN_ECS])
    assert ask(make_stack(), q).rcode() == dns.rcode.FORMERR


def test_no_question_or_two_questions_is_formerr(make_stack: MakeStack) -> None:
    q = query()
    q.question = []
    assert ask(make_stack(), q).rcode() == dns.rcode.FORMERR
    q = query()
    q.question = [*q.question, *query("edge.test.", "NS").question]
    assert ask(make_stack(), q).rcode() == dns.rcode.FORMERR


def test_whole_byte_by_byte_and_trailing_junk(make_stack: MakeStack) -> None:
    stack = make_stack()
    wire = query(ecs=LONDON_ECS).to_wire()
    for cut in range(len(wire)):
        out = ask_wire(stack, wire[:cut])
        if cut < 12:
            assert out is None
        else:
            assert out is not None
            r = dns.message.from_wire(out)
            assert r.rcode() == dns.rcode.FORMERR and r.id == struct.unpack("!H", wire[:2])[0]
    assert dns.message.from_wire(ask_wire(stack, wire) or b"").rcode() == dns.rcode.NOERROR
    out = ask_wire(stack, wire + b"junk")
    assert out is not None and dns.message.from_wire(out).rcode() == dns.rcode.FORMERR


def test_responses_are_never_answered(make_stack: MakeStack) -> None:
    stack = make_stack()
    reply = ask_wire(stack, query().to_wire())
    assert reply is not None and ask_wire(stack, reply) is None


BIG_REGION = '\n[[region]]\nname = "big"\nlatitude_deg = 0.0\nlongitude_deg = 0.0\n' + "".join(
    f'[[region.node]]\nipv6 = "2001:db8:1::{i:x}"\nhealth_url = "http://127.0.0.1:9/"\n'
    for i in range(80)
)


def test_udp_truncation_and_tcp_full_answer(make_stack: MakeStack) -> None:
    stack = make_stack(base=BASE_TOML + BIG_REGION)
    stack.state.drains["us-east"].start(0, 0)
    for r_name in ("eu-west", "ap-south", "us-east"):
        for node in stack.config.region(r_name).nodes:
            stack.set_node(node.name, up=False)
    plain = ask(stack, query(rdtype="AAAA"))  # no EDNS: 512 bytes
    assert plain.flags & dns.flags.TC and not plain.answer
    edns = ask(stack, query(rdtype="AAAA", use_edns=0, payload=65000))  # capped at our 1232
    assert edns.flags & dns.flags.TC and edns.edns == 0
    tiny = ask(stack, query(rdtype="AAAA", use_edns=0, payload=100))  # below 512 means 512
    assert tiny.flags & dns.flags.TC
    small = make_stack()  # 2 AAAA records fit in 512 even when the client said 100
    assert not ask(small, query(rdtype="AAAA", use_edns=0, payload=100)).flags & dns.flags.TC
    full = ask(stack, query(rdtype="AAAA"), transport="tcp")
    assert not full.flags & dns.flags.TC and len(addresses(full)) == 80
    # A small answer still fits in 512 bytes.
    assert not ask(stack, query(rdtype="A")).flags & dns.flags.TC


def test_wire_cache_answers_repeats_with_their_own_id_and_follows_health(
    make_stack: MakeStack,
) -> None:
    stack = make_stack()
    first = query(ecs=LONDON_ECS, id=1)
    again = query(ecs=LONDON_ECS, id=2)
    a = ask_wire(stack, first.to_wire())
    b = ask_wire(stack, again.to_wire())
    assert a is not None and b is not None
    assert a[:2] == b"\x00\x01" and b[:2] == b"\x00\x02" and a[2:] == b[2:]
    assert stack.authority.cache.exact_hits == 1  # the repeat was served from the cache
    stack.set_node("eu-west-1", up=False)
    stack.set_node("eu-west-2", up=False)
    moved = dns.message.from_wire(ask_wire(stack, again.to_wire()) or b"")
    assert addresses(moved) == {"192.0.2.1"}  # a health change is a different cache key


def _scope_net(r: dns.message.Message) -> ipaddress.IPv4Network:
    echoed = ecs_of(r)
    return ipaddress.IPv4Network((echoed.address, echoed.scopelen), strict=False)


def test_scope_cache_serves_another_subnet_of_the_scope_with_its_id_and_address(
    make_stack: MakeStack,
) -> None:
    stack = make_stack()
    first = ask(stack, query(ecs=dns.edns.ECSOption("81.2.69.142", 32), id=7))
    scope = _scope_net(first)
    assert scope.prefixlen == 31  # the London network of the test DB
    # The other address of the /31: same scope network, another subnet, another id.
    other = query(ecs=dns.edns.ECSOption("81.2.69.143", 32), id=9)
    out = ask_wire(stack, other.to_wire())
    assert out is not None and stack.authority.cache.scope_hits == 1
    r = dns.message.from_wire(out)
    assert r.id == 9 and addresses(r) == addresses(first)
    echoed = ecs_of(r)
    assert (echoed.address, echoed.srclen, echoed.scopelen) == ("81.2.69.143", 32, 31)
    # The same as the full path renders for that query in a fresh stack (dnspython shuffles
    # the records of an RRset, so compare them as sets).
    fresh = dns.message.from_wire(ask_wire(make_stack(), other.to_wire()) or b"")
    assert (r.flags, r.rcode(), r.payload, r.answer[0].ttl) == (
        fresh.flags, fresh.rcode(), fresh.payload, fresh.answer[0].ttl,
    )  # fmt: skip
    assert addresses(r) == addresses(fresh) and ecs_of(r) == ecs_of(fresh)


def test_scope_cache_never_answers_outside_the_scope_or_across_types(make_stack: MakeStack) -> None:
    stack = make_stack()
    ask(stack, query(ecs=dns.edns.ECSOption("81.2.69.142", 32)))
    seattle = ask(stack, query(ecs=dns.edns.ECSOption("216.160.83.56", 32)))
    assert addresses(seattle) == {"192.0.2.1"}
    aaaa = ask(stack, query(rdtype="AAAA", ecs=dns.edns.ECSOption("81.2.69.143", 32)))
    assert addresses(aaaa) == {"2001:db8::11"}
    # A different EDNS payload size is a different key: the client's UDP size is respected.
    big = ask(stack, query(ecs=dns.edns.ECSOption("81.2.69.143", 32), payload=4096))
    assert big.payload == 1232 and addresses(big) == {"192.0.2.11", "192.0.2.12"}
    assert stack.authority.cache.scope_hits == 0


def test_scope_cache_follows_health_and_drain(make_stack: MakeStack) -> None:
    stack = make_stack()
    ask(stack, query(ecs=dns.edns.ECSOption("81.2.69.142", 32)))
    stack.set_node("eu-west-1", up=False)
    stack.set_node("eu-west-2", up=False)
    moved = ask(stack, query(ecs=dns.edns.ECSOption("81.2.69.143", 32)))
    assert addresses(moved) == {"192.0.2.1"}
    stack.set_node("eu-west-1", up=True)
    stack.set_node("eu-west-2", up=True)
    assert addresses(ask(stack, query(ecs=LONDON_ECS))) == {"192.0.2.11", "192.0.2.12"}
    stack.state.drains["eu-west"].start(0.0, over_s=0)
    assert addresses(ask(stack, query(ecs=LONDON_ECS))) == {"192.0.2.1"}
    stack.state.set_weight("us-east", 0)
    assert addresses(ask(stack, query(ecs=LONDON_ECS))) == {"192.0.2.21"}


def test_cache_follows_a_drain_ramp_without_events(make_stack: MakeStack) -> None:
    """Mid-ramp the shares move with the clock alone; the cache must not freeze them."""
    stack = make_stack()
    stack.state.drains["eu-west"].start(0.0, over_s=100.0)
    london = query(ecs=LONDON_ECS).to_wire()
    first = dns.message.from_wire(ask_wire(stack, london, now=0.0) or b"")
    assert addresses(first) == {"192.0.2.11", "192.0.2.12"}
    end = dns.message.from_wire(ask_wire(stack, london, now=100.0) or b"")
    assert addresses(end) == {"192.0.2.1"}  # drained: the cached eu-west answer is gone


def test_parse_ecs_takes_only_the_plain_shape() -> None:
    plain = query(ecs=dns.edns.ECSOption("81.2.69.0", 24)).to_wire()
    parsed = parse_ecs(plain)
    assert parsed is not None and parsed[1:] == (32, 24, int(ipaddress.IPv4Address("81.2.69.0")))
    assert plain[parsed[0] :] == bytes([81, 2, 69])
    v6 = parse_ecs(query(ecs=dns.edns.ECSOption("2001:218::", 32)).to_wire())
    assert v6 is not None and v6[1:3] == (128, 32)
    assert parse_ecs(query().to_wire()) is None  # no OPT
    assert parse_ecs(query(use_edns=0).to_wire()) is None  # OPT without ECS
    assert parse_ecs(query(ecs=dns.edns.ECSOption("81.2.69.0", 0)).to_wire()) is None
    stray = bytearray(plain)
    stray[-5] = 23  # source /23, but 81.2.69 has a bit set past it
    assert parse_ecs(bytes(stray)) is None
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"12345678")
    two = dns.message.make_query(
        "www.edge.test.", "A", use_edns=0, options=[LONDON_ECS, cookie]
    ).to_wire()
    assert parse_ecs(two) is None
    for cut in range(len(plain)):
        parse_ecs(plain[:cut])  # never raises on a truncated query
