import pytest

from edge.errors import ConfigError
from edge.node.routing import Route, RoutingTable, normalize_host


def table(*specs: str) -> RoutingTable:
    return RoutingTable([Route.parse(spec, f"fn:{spec}") for spec in specs])


def test_exact_host_beats_wildcard() -> None:
    t = table("*/", "example.com/")
    assert t.match("example.com", "/x").function == "fn:example.com/"  # type: ignore[union-attr]
    assert t.match("other.org", "/x").function == "fn:*/"  # type: ignore[union-attr]


def test_longest_prefix_wins_on_segment_boundaries() -> None:
    t = table("*/", "*/api", "*/api/v2")
    assert t.match("h", "/api/v2/users").function == "fn:*/api/v2"  # type: ignore[union-attr]
    assert t.match("h", "/api").function == "fn:*/api"  # type: ignore[union-attr]
    assert t.match("h", "/api/").function == "fn:*/api"  # type: ignore[union-attr]
    assert t.match("h", "/apix").function == "fn:*/"  # type: ignore[union-attr]


def test_no_match_without_catch_all() -> None:
    assert table("example.com/api").match("example.com", "/other") is None
    assert table("example.com/api").match("evil.com", "/api") is None


@pytest.mark.parametrize(
    ("raw", "want"),
    [("Example.COM:8080", "example.com"), ("[::1]:8787", "[::1]"), ("::1", "::1"), ("h", "h")],
)
def test_host_normalization(raw: str, want: str) -> None:
    assert normalize_host(raw) == want


def test_duplicate_route_rejected() -> None:
    with pytest.raises(ConfigError, match="defined twice"):
        table("*/api", "*/api/")
