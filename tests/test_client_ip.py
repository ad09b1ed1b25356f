from edge.node.client_ip import client_ip, parse_networks

TRUSTED = parse_networks(["127.0.0.1/32", "10.0.0.0/8"])


def test_untrusted_peer_forwarded_for_ignored() -> None:
    assert client_ip("203.0.113.9", ["81.2.69.142"], TRUSTED) == "203.0.113.9"


def test_trusted_peer_takes_rightmost_untrusted_hop() -> None:
    # The client forged the leftmost entry; the proxy chain appended the real one.
    assert client_ip("127.0.0.1", ["1.1.1.1, 81.2.69.142, 10.0.0.5"], TRUSTED) == "81.2.69.142"


def test_repeated_headers_are_one_chain() -> None:
    assert client_ip("127.0.0.1", ["1.1.1.1", "89.160.20.112"], TRUSTED) == "89.160.20.112"


def test_garbage_chain_falls_back_to_peer() -> None:
    assert client_ip("127.0.0.1", ["not-an-ip"], TRUSTED) == "127.0.0.1"


def test_an_address_with_a_zone_is_garbage() -> None:
    # The zone is the sender's interface name: any text, which a function would get as the IP.
    assert client_ip("127.0.0.1", ["fe80::1%eth0"], TRUSTED) == "127.0.0.1"
    assert client_ip("127.0.0.1", ["81.2.69.142, ff02::1%<script>"], TRUSTED) == "127.0.0.1"


def test_all_trusted_takes_first() -> None:
    assert client_ip("127.0.0.1", ["10.1.1.1, 10.2.2.2"], TRUSTED) == "10.1.1.1"


def test_no_header() -> None:
    assert client_ip("127.0.0.1", [], TRUSTED) == "127.0.0.1"
