import pytest

from edge.errors import ConfigError
from edge.node.geo import GeoLookup

from .conftest import SHARED_GEOIP


@pytest.fixture(scope="module")
def city() -> GeoLookup:
    return GeoLookup(SHARED_GEOIP / "GeoIP2-City-Test.mmdb")


def test_london(city: GeoLookup) -> None:
    geo = city.lookup("81.2.69.142")
    assert (geo.country, geo.continent, geo.city) == ("GB", "EU", "London")
    assert geo.latitude == pytest.approx(51.5142) and geo.longitude == pytest.approx(-0.0931)


def test_sweden_and_japan_ipv6(city: GeoLookup) -> None:
    assert city.lookup("89.160.20.112").country == "SE"
    assert city.lookup("2001:218::1").country == "JP"


@pytest.mark.parametrize("ip", ["10.1.2.3", "127.0.0.1", "::1", "not an ip", "8.8.8.8"])
def test_private_unknown_and_garbage_are_empty(city: GeoLookup, ip: str) -> None:
    geo = city.lookup(ip)
    assert (geo.country, geo.city, geo.latitude) == (None, None, None)


def test_country_database_fills_country_only() -> None:
    geo = GeoLookup(SHARED_GEOIP / "GeoLite2-Country-Test.mmdb").lookup("81.2.69.142")
    assert geo.country == "GB" and geo.city is None


@pytest.mark.parametrize(
    "name",
    ["GeoIP2-City-Test-Broken-Double-Format.mmdb", "GeoIP2-City-Test-Invalid-Node-Count.mmdb"],
)
def test_corrupt_database_is_a_clear_error(name: str) -> None:
    with pytest.raises(ConfigError, match="not a valid MaxMind DB"):
        GeoLookup(SHARED_GEOIP / name)


def test_missing_database() -> None:
    with pytest.raises(ConfigError, match="file not found"):
        GeoLookup(SHARED_GEOIP / "nope.mmdb")
