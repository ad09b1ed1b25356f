"""The authoritative DNS core: query bytes in, response bytes out (or None: stay silent).

No sockets here (`server.py` is the shell); time arrives as `now`. We answer for one zone:
SOA and NS at the apex, glue for in-zone nameservers, and A/AAAA for the configured hosts with
the serving nodes of the region steering picks for the client (its ECS subnet when sent, else
the resolver's address). Every failure is a `DnsError` carrying its rcode, turned into a
response in one place (`_error_response`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from edge.traffic.metrics import DROPPED, DnsStats
from edge.traffic.regions import Glue, IPNetwork, Region, TrafficConfig
from edge.traffic.state import TrafficState
from edge.traffic.steering import Steerer
from edge.traffic.wire_cache import WireCache

Transport = Literal["udp", "tcp"]

HEADER_BYTES = 12
MIN_UDP_PAYLOAD_BYTES = 512  # RFC 6891 6.2.5: smaller advertised sizes mean 512
TCP_MAX_BYTES = 65535
ZONE_TTL_S = 3600  # SOA, NS and glue change with deployments, not with health
# Hash key for clients without ECS: the resolver's /24 or /56, the same granularity resolvers
# use for ECS by default, so a drain splits resolvers the way it splits ECS clients.
RESOLVER_PREFIX = {4: 24, 6: 56}


# --- Errors: the rcode a client sees, by who is at fault -------------------------------------


class DnsError(Exception):
    rcode = dns.rcode.SERVFAIL


class FormatError(DnsError):
    """The query is malformed (the client's fault)."""

    rcode = dns.rcode.FORMERR


class OpcodeNotImplemented(DnsError):
    rcode = dns.rcode.NOTIMP


class Refused(DnsError):
    """Outside our zone or a class/type we do not serve to anyone."""

    rcode = dns.rcode.REFUSED


class BadVersion(DnsError):
    rcode = dns.rcode.BADVERS


def _error_response(
    wire: bytes, query: dns.message.Message | None, err: DnsError
) -> dns.message.Message | bytes:
    """The one place errors become responses: a full response when the query parsed, else a
    bare header echoing id, opcode and RD."""
    if query is not None:
        response = dns.message.make_response(query)
        response.set_rcode(err.rcode)
        return response
    qid, flags = struct.unpack("!HH", wire[:4])
    flags = dns.flags.QR | (flags & (0xF << 11)) | (flags & dns.flags.RD) | (err.rcode & 0xF)
    return struct.pack("!HHHHHH", qid, flags, 0, 0, 0, 0)


# --- The authority -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Zone:
    """Everything an answer reads but health, drains and weights: traffic.toml's records and
    steering, and the region map steering walks and addresses come from (`steerer.regions`,
    indexed in `regions`). Built once per configuration or map and swapped whole
    (`Authority.reconfigure`, `Authority.set_regions`), so a query reads one configuration and
    one map from start to end. The live state it reads is keyed by node and region name."""

    config: TrafficConfig
    steerer: Steerer
    regions: Mapping[str, Region]
    name: dns.name.Name
    hosts: frozenset[dns.name.Name]
    glue: dict[dns.name.Name, Glue]
    names: frozenset[dns.name.Name]
    soa: dns.rrset.RRset
    ns: dns.rrset.RRset


def build_zone(config: TrafficConfig, steerer: Steerer) -> Zone:
    d = config.dns
    hosts = frozenset(d.hosts)
    glue = {g.name: g for g in d.glue}
    rname = dns.name.Name(("hostmaster",)).concatenate(d.zone)
    # refresh, retry, expire only matter to secondaries; minimum is the negative-cache TTL.
    soa = f"{d.nameservers[0]} {rname} {d.soa_serial} 3600 600 1209600 {d.ttl_s}"
    return Zone(
        config, steerer, {r.name: r for r in steerer.regions},
        d.zone, hosts, glue, frozenset({d.zone, *hosts, *glue}),
        dns.rrset.from_text_list(d.zone, d.ttl_s, "IN", "SOA", [soa]),
        dns.rrset.from_text_list(
            d.zone, ZONE_TTL_S, "IN", "NS", [n.to_text() for n in d.nameservers]
        ),
    )  # fmt: skip


class Authority:
    def __init__(self, config: TrafficConfig, steerer: Steerer, state: TrafficState) -> None:
        self.state = state
        self.current = build_zone(config, steerer)
        self.cache = WireCache()
        self.stats = DnsStats()

    @property
    def config(self) -> TrafficConfig:
        return self.current.config

    @property
    def steerer(self) -> Steerer:
        return self.current.steerer

    def reconfigure(self, config: TrafficConfig, steerer: Steerer) -> None:
        """Answer from `config`, over `steerer.regions`, from now on. One assignment: a query
        already running finishes on the zone it read; the caller then moves the state's
        generation, so answers computed from the old zone land in cache tiers no later query
        reads."""
        self.current = build_zone(config, steerer)

    def set_regions(self, regions: tuple[Region, ...]) -> None:
        """A `TrafficState.region_listeners` entry (the control plane's map): the current
        rules over `regions`, swapped in one assignment as `reconfigure` does."""
        zone = self.current
        if regions != zone.steerer.regions:
            steerer = zone.steerer.over(regions)
            self.current = dataclasses.replace(
                zone, steerer=steerer, regions={r.name: r for r in regions}
            )

    def handle(
        self,
        wire: bytes,
        client_addr: str,
        transport: Transport,
        now: float,
        counts: list[int] | None = None,
    ) -> bytes | None:
        """`counts`: the calling thread's tally (`DnsStats.tally`); the event loop's when None."""
        if counts is None:
            counts = self.stats.counts
        if len(wire) < HEADER_BYTES:
            counts[DROPPED] += 1
            return None  # not even an id to answer to
        # The same query in the same state gets the same answer (from anywhere in its ECS
        # scope): serve it from the wire cache with the id (and ECS address) swapped in, and
        # count it under the outcome filed with it. Parsing and rendering a message with
        # dnspython costs far more than the lookup. The fingerprint is read before answering,
        # so an answer that raced a state change is filed under the old fingerprint, which no
        # later query reads.
        tiers = self.cache.tiers(self.state.fingerprint(now))
        out = tiers.get(wire, client_addr, transport, counts)
        if out is not None:
            return out
        answered = self._handle(wire, client_addr, transport, now)
        if answered is None:
            counts[DROPPED] += 1
            return None
        out, outcome = answered
        counts[outcome] += 1
        tiers.put(wire, client_addr, transport, out, outcome)
        return out

    def _handle(
        self, wire: bytes, client_addr: str, transport: Transport, now: float
    ) -> tuple[bytes, int] | None:
        """The response and its metrics outcome (see DnsStats), or None for silence."""
        flags = struct.unpack("!H", wire[2:4])[0]
        if flags & dns.flags.QR:
            return None  # a response, not a query: answering could start a reflection loop
        zone = self.current  # one read: a reload swaps it whole
        query = None
        region = None
        try:
            if (flags >> 11) & 0xF != dns.opcode.QUERY:
                raise OpcodeNotImplemented("only QUERY")
            query = _parse(wire)
            response, region = self._respond(zone, query, client_addr, now)
        except DnsError as err:
            out = _error_response(wire, query, err)
            if isinstance(out, bytes):
                return out, self.stats.outcome(None, err.rcode, None, transport)
            response = out
        qtype = query.question[0].rdtype if query is not None and query.question else None
        return (
            _render(response, query, transport, zone.config.dns.max_udp_payload_bytes),
            self.stats.outcome(qtype, response.rcode(), region, transport),
        )

    def _respond(
        self, zone: Zone, query: dns.message.Message, client_addr: str, now: float
    ) -> tuple[dns.message.Message, str | None]:
        """The response, and the region steering picked for it (None: no steered answer)."""
        if query.edns > 0:
            raise BadVersion(f"EDNS version {query.edns}")
        if len(query.question) != 1:
            raise FormatError("exactly one question")
        ecs_options = query.get_options(dns.edns.OptionType.ECS)
        if len(ecs_options) > 1:
            raise FormatError("more than one ECS option")
        ecs = ecs_options[0] if ecs_options else None
        q = query.question[0]
        if q.rdclass not in (dns.rdataclass.IN, dns.rdataclass.ANY):
            raise Refused("class")
        if not q.name.is_subdomain(zone.name):
            raise Refused("not our zone")
        if q.rdtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
            raise Refused("no zone transfers")

        response = dns.message.make_response(
            query, our_payload=zone.config.dns.max_udp_payload_bytes
        )
        response.flags |= dns.flags.AA
        subnet = _client_subnet(ecs, client_addr)
        rrsets, scope, region = self._records(
            zone, q.name, q.rdtype, subnet, now, want_scope=ecs is not None
        )
        if rrsets:
            response.answer.extend(rrsets)
        else:
            if not _exists(zone, q.name):
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(zone.soa)
        if ecs is not None:
            assert isinstance(ecs, dns.edns.ECSOption)
            # Source 0: the resolver asked us not to tailor; the answer holds for everyone.
            scope = scope if ecs.srclen > 0 else 0
            echoed = dns.edns.ECSOption(ecs.address, ecs.srclen, scope)
            response.use_edns(
                0, 0, zone.config.dns.max_udp_payload_bytes, query.payload, [echoed], response.pad
            )
        return response, region

    def _records(
        self,
        zone: Zone,
        name: dns.name.Name,
        rdtype: int,
        subnet: IPNetwork,
        now: float,
        *,
        want_scope: bool = True,
    ) -> tuple[list[dns.rrset.RRset], int, str | None]:
        """The answer RRsets for (name, type), the ECS scope they are valid for, and the region
        steering picked (None when no steered address is in the answer)."""
        out: list[dns.rrset.RRset] = []
        scope = 0
        region = None
        want = {rdtype} if rdtype != dns.rdatatype.ANY else {
            dns.rdatatype.SOA, dns.rdatatype.NS, dns.rdatatype.A, dns.rdatatype.AAAA,
        }  # fmt: skip
        if name == zone.name:
            if dns.rdatatype.SOA in want:
                out.append(dns.rrset.from_rdata_list(name, ZONE_TTL_S, list(zone.soa)))
            if dns.rdatatype.NS in want:
                out.append(dns.rrset.from_rdata_list(name, ZONE_TTL_S, list(zone.ns)))
        for rdt, family in ((dns.rdatatype.A, 4), (dns.rdatatype.AAAA, 6)):
            if rdt not in want:
                continue
            if name in zone.hosts:
                answer = zone.steerer.answer(
                    subnet, self.state.status(now, family, zone.steerer.regions),
                    scope=want_scope,
                )  # fmt: skip
                if answer is None:
                    continue
                scope = max(scope, answer.scope_prefix)
                addrs = [str(a) for a in self.state.addresses(answer.region, family, zone.regions)]
                ttl = zone.config.dns.ttl_s
                region = answer.region if addrs else region
            elif name in zone.glue:
                g = zone.glue[name]
                addrs = [str(a) for a in (g.ipv4 if family == 4 else g.ipv6)]
                ttl = ZONE_TTL_S
            else:
                continue
            if addrs:
                out.append(dns.rrset.from_text_list(name, ttl, "IN", rdt, addrs))
        return out, scope, region


def _exists(zone: Zone, name: dns.name.Name) -> bool:
    # A name above a configured one (an empty non-terminal) exists: NODATA, not NXDOMAIN.
    return any(known.is_subdomain(name) for known in zone.names)


def _parse(wire: bytes) -> dns.message.Message:
    try:
        return dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError, IndexError, UnicodeError) as e:
        # dnspython validates ECS (family, prefix lengths, zero padding) while parsing, so
        # malformed ECS lands here too.
        raise FormatError(str(e)) from None


def _client_subnet(ecs: dns.edns.Option | None, client_addr: str) -> IPNetwork:
    if isinstance(ecs, dns.edns.ECSOption) and ecs.srclen > 0:
        return ipaddress.ip_network((ecs.address, ecs.srclen), strict=False)
    try:
        addr = ipaddress.ip_address(client_addr)
    except ValueError:
        return ipaddress.ip_network("0.0.0.0/32")  # special-use: the default order
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # a dual-stack socket reporting an IPv4 client
    return ipaddress.ip_network((addr, RESOLVER_PREFIX[addr.version]), strict=False)


def _render(
    response: dns.message.Message,
    query: dns.message.Message | None,
    transport: Transport,
    our_payload: int,
) -> bytes:
    if transport == "tcp":
        limit = TCP_MAX_BYTES
    elif query is not None and query.edns >= 0:
        limit = max(MIN_UDP_PAYLOAD_BYTES, min(query.payload, our_payload))
    else:
        limit = MIN_UDP_PAYLOAD_BYTES
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        # Answer nothing rather than a partial RRset; TC sends the resolver to TCP (RFC 7766).
        response.answer.clear()
        response.authority.clear()
        response.additional.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit)
