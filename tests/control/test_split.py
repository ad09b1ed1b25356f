"""Sticky canary split: stable per client, monotone in the percent, about the right share."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge.control.split import choose, client_key, valid_sticky

keys = st.text(min_size=0, max_size=40)
percents = st.integers(min_value=0, max_value=100)


@given(keys, percents)
def test_same_client_same_answer(key: str, percent: int) -> None:
    first = choose("stable", "canary", percent, key, "acme/f")
    assert all(choose("stable", "canary", percent, key, "acme/f") == first for _ in range(3))


@given(keys, percents, percents)
def test_raising_the_percent_only_moves_clients_to_the_canary(key: str, p: int, q: int) -> None:
    low, high = sorted((p, q))
    if choose("stable", "canary", low, key, "acme/f") == "canary":
        assert choose("stable", "canary", high, key, "acme/f") == "canary"


def test_edges_and_share() -> None:
    clients = [f"10.0.{i // 256}.{i % 256}" for i in range(20_000)]
    assert all(choose("s", "c", 0, k, "f") == "s" for k in clients[:500])
    assert all(choose("s", "c", 100, k, "f") == "c" for k in clients[:500])
    assert all(choose("s", None, 100, k, "f") == "s" for k in clients[:500])
    share = sum(choose("s", "c", 10, k, "f") == "c" for k in clients) / len(clients)
    assert 0.09 < share < 0.11


def test_sticky_keys() -> None:
    assert valid_sticky("ip") and valid_sticky("cookie:sid")
    assert not valid_sticky("cookie:") and not valid_sticky("header:x") and not valid_sticky("")
    assert client_key("cookie:sid", "1.2.3.4", {"sid": "abc"}) == "cookie=abc"
    assert client_key("cookie:sid", "1.2.3.4", {}) == "ip=1.2.3.4"
    assert client_key("ip", "1.2.3.4", {"sid": "abc"}) == "ip=1.2.3.4"
