"""What the end-to-end geo-DNS tests share: the `[dns]` and `[health]` tables of their
traffic.toml (zone edge.test., host hello, fast health checks) and an A query sent from a
client subnet (EDNS Client Subnet), as a resolver near that client would send it."""

from __future__ import annotations

import dns.edns
import dns.message
import dns.query


def dns_and_health_toml(port: int, interval_s: float = 0.5) -> str:
    """`port`: where `edge dns` answers; `interval_s`: between health checks of each node."""
    return f"""
[dns]
zone = "edge.test."
hosts = ["hello"]
nameservers = ["ns1.edge.test."]
ttl_s = 5
port = {port}

[health]
interval_s = {interval_s}
timeout_s = 0.5
rise = 1
fall = 2
"""


def resolve(port: int, subnet: str) -> set[str]:
    """The addresses `edge dns` on 127.0.0.1:`port` answers for hello.edge.test to `subnet`."""
    q = dns.message.make_query("hello.edge.test", "A")
    q.use_edns(0, options=[dns.edns.ECSOption.from_text(subnet)])
    r = dns.query.udp(q, "127.0.0.1", port=port, timeout=2)
    return {rr.address for rrset in r.answer for rr in rrset}
