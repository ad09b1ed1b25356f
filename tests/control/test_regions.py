from pathlib import Path

import pytest

from edge.control.regions import RegionDrain, parse_duration_s, share_now
from edge.control.store import Store
from edge.traffic.drain_follower import FollowedDrain, apply_regions
from edge.traffic.regions import parse_traffic_config
from edge.traffic.state import TrafficState

from .conftest import FakeClock


def test_drain_ramps_down_and_reports_its_state() -> None:
    d = RegionDrain("eu-west", "drain", started_unix=100.0, over_s=10.0, from_share=1.0)
    assert (d.share(100.0), d.state(100.0)) == (1.0, "draining")
    assert d.share(105.0) == pytest.approx(0.5)
    assert (d.share(110.0), d.state(110.0)) == (0.0, "drained")
    assert share_now(None, 123.0) == 1.0


def test_undrain_halfway_starts_from_where_the_drain_got(tmp_path: Path) -> None:
    clock = FakeClock()
    with Store(tmp_path, now=clock) as store:
        store.set_region_drain("eu-west", "drain", 10.0)
        clock.advance(4.0)
        back = store.set_region_drain("eu-west", "undrain", 4.0)
        assert back.from_share == pytest.approx(0.6)  # no jump
        clock.advance(2.0)
        assert store.region_drains()["eu-west"].share(clock()) == pytest.approx(0.8)
        clock.advance(2.0)
        assert store.region_drains()["eu-west"].state(clock()) == "active"


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("30s", 30), ("5m", 300), ("1h", 3600)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


def test_bad_duration() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_s("soon")


def test_dns_follows_ramps_through_the_clock_offset() -> None:
    config = parse_traffic_config(
        {
            "dns": {"zone": "edge.test.", "hosts": ["www"], "nameservers": ["ns1.edge.test."]},
            "region": [
                {"name": "eu-west", "latitude_deg": 53.3, "longitude_deg": -6.2,
                 "node": [{"name": "e1", "ipv4": "127.0.0.21",
                           "health_url": "http://127.0.0.21:8787/healthz"}]},
            ],
        },
        "traffic.toml",
    )
    state = TrafficState(config)
    drain = {"direction": "drain", "started_unix": 1000.0, "over_s": 10.0, "from_share": 1.0}
    # Monotonic 0 is unix 1000 here: 5 s into the ramp the share is half.
    apply_regions(state, [{"name": "eu-west", "drain": drain}, {"name": "nowhere"}], 1000.0)
    assert isinstance(state.drains["eu-west"], FollowedDrain)
    assert state.drains["eu-west"].share(5.0) == pytest.approx(0.5)
    apply_regions(state, [{"name": "eu-west", "drain": None}], 1000.0)
    assert state.drains["eu-west"].share(5.0) == 1.0
