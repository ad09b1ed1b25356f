import ipaddress
import shutil
from pathlib import Path

import dns.name
import pytest

from edge.errors import ConfigError
from edge.traffic.geodb import GeoDB, default_database
from edge.traffic.regions import load_traffic_config

from .conftest import BASE_TOML, CITY_TEST_DB, GEOIP, MakeConfig


def test_base_config(make_config: MakeConfig) -> None:
    config = make_config()
    assert config.dns.zone == dns.name.from_text("edge.test.")
    assert [r.name for r in config.regions] == ["us-east", "eu-west", "ap-south"]
    eu = config.region("eu-west")
    assert [n.name for n in eu.nodes] == ["eu-west-1", "eu-west-2"]
    assert eu.nodes[1].ipv6 is None and eu.has_family(6)
    assert config.steering.default == ("us-east", "eu-west", "ap-south")
    assert config.health.rise == 2 and config.dns.ttl_s == 30


def test_cidr_overrides_sorted_longest_first(make_config: MakeConfig) -> None:
    config = make_config(
        '[steering.cidr]\n"10.0.0.0/8" = ["eu-west"]\n"10.1.0.0/16" = ["ap-south"]\n'
    )
    assert [str(n) for n, _ in config.steering.by_cidr] == ["10.1.0.0/16", "10.0.0.0/8"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[steering]\ndefault = ["mars"]\n', r"steering\.default: unknown region 'mars'"),
        ('[steering.country]\ngb = ["eu-west"]\n', r"steering\.country\.gb: country"),
        ('[steering.continent]\nXX = ["eu-west"]\n', r"steering\.continent\.XX: continent"),
        ('[steering.cidr]\n"10.0.0.1/8" = ["eu-west"]\n', r"steering\.cidr\.10\.0\.0\.1/8"),
        ("[steering]\nfoo = 1\n", r"steering\.foo: unknown key"),
        ('[steering]\ndefault = ["eu-west", "eu-west"]\n', r"listed twice"),
    ],
)
def test_errors_name_file_and_key(make_config: MakeConfig, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^traffic\.toml: .*" + message):
        make_config(extra)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("latitude_deg = 53.35", "latitude_deg = 99.0", r"region\[1\]\.latitude_deg must be"),
        ('name = "eu-west"', 'name = "EU"', r"region\[1\]\.name must be lower-case"),
        (
            'ipv4 = "192.0.2.11"',
            'ipv4 = "2001:db8::5"',
            r"region\[1\]\.node\[0\]\.ipv4 must be an IPv4",
        ),
        ('zone = "edge.test."', "zone = 5", r"dns\.zone must be str"),
        ("ttl_s = 30", "ttl_s = 0", r"dns\.ttl_s must be between"),
        ("rise = 2", "rise = 0", r"health\.rise must be between 1 and 100"),
    ],
)
def test_region_and_dns_errors(make_config: MakeConfig, old: str, new: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config(base=BASE_TOML.replace(old, new, 1))


def test_weight_range(make_config: MakeConfig) -> None:
    with pytest.raises(ConfigError, match=r"weight must be between 0 and 100"):
        make_config(base=BASE_TOML.replace('name = "eu-west"', 'name = "eu-west"\nweight = 101'))


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "traffic.toml"
    path.write_text(BASE_TOML)
    assert load_traffic_config(path).region("ap-south").nodes[0].ipv4 == ipaddress.ip_address(
        "192.0.2.21"
    )
    path.write_text("[dns\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_traffic_config(path)


# --- GeoDB --------------------------------------------------------------------------------------


def test_geodb_locates_with_the_db_network() -> None:
    with GeoDB(CITY_TEST_DB) as db:
        hit = db.locate(ipaddress.ip_address("81.2.69.142"))
        assert hit.location is not None and hit.location.country == "GB"
        assert str(hit.network) == "81.2.69.142/31"
        assert db.locate(ipaddress.ip_address("8.8.8.8")).location is None


def test_default_database_is_the_world_wide_geolite2() -> None:
    with GeoDB() as db:
        assert db.path == default_database()
        hit = db.locate(ipaddress.ip_address("8.8.8.8"))
        assert hit.location is not None and hit.location.country == "US"


@pytest.mark.parametrize(
    "name",
    ["GeoIP2-City-Test-Broken-Double-Format.mmdb", "GeoIP2-City-Test-Invalid-Node-Count.mmdb"],
)
def test_corrupt_database_fails_at_start_and_reload_keeps_the_old_one(
    name: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="not a valid MaxMind DB"):
        GeoDB(GEOIP / name)
    live = tmp_path / "geo.mmdb"
    shutil.copy(CITY_TEST_DB, live)
    with GeoDB(live) as db:
        with pytest.raises(ConfigError, match="not a valid MaxMind DB"):
            db.reload(GEOIP / name)
        assert db.path == live
        assert db.locate(ipaddress.ip_address("81.2.69.142")).location is not None


def test_missing_database() -> None:
    with pytest.raises(ConfigError, match="file not found"):
        GeoDB(GEOIP / "nope.mmdb")
