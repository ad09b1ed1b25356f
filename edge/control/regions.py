"""Regions as the control plane keeps them and snapshots carry them, and what a drain ramp
means at a given time (pure).

A region has an optional location (for nearest-region spill), an optional weight (0..100; None:
not set here, so the DNS server keeps its traffic.toml weight and nodes use 100) and at most one
drain ramp. A drain or undrain is a linear ramp of the region's share of traffic from where it
stood when the operator asked, to 0 (drain) or 1 (undrain), over `over_s` seconds. The DNS
server and the nodes turn the share into answers and spills; this module only says what the
share is. Ramps are in unix time: every host reads them with its own clock, so hosts should be
NTP-synchronised (a skew of a second moves a 5-minute ramp by a second, nothing worse).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edge.traffic.drain import Ramp

REGION_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
MAX_OVER_S = 7 * 24 * 3600.0


@dataclass(frozen=True)
class RegionDrain:
    region: str
    direction: str  # "drain" or "undrain"
    started_unix: float
    over_s: float
    from_share: float

    def ramp(self) -> Ramp:
        to = 0.0 if self.direction == "drain" else 1.0
        return Ramp(self.started_unix, self.over_s, self.from_share, to)

    def share(self, now_unix: float) -> float:
        return self.ramp().share(now_unix)

    def state(self, now_unix: float) -> str:
        done = self.ramp().done(now_unix)
        if self.direction == "drain":
            return "drained" if done else "draining"
        return "active" if done else "undraining"

    def state_json(self) -> dict[str, Any]:
        """What a revision and a snapshot keep: the ramp, without anything computed at a time."""
        return {
            "direction": self.direction,
            "started_unix": self.started_unix,
            "over_s": self.over_s,
            "from_share": self.from_share,
        }

    def to_json(self, now_unix: float) -> dict[str, Any]:
        return {
            "region": self.region,
            "state": self.state(now_unix),
            "share": round(self.share(now_unix), 4),
            "direction": self.direction,
            "started_unix": self.started_unix,
            "over_s": self.over_s,
            "from_share": self.from_share,
        }


@dataclass(frozen=True)
class Region:
    name: str
    latitude_deg: float | None = None
    longitude_deg: float | None = None
    weight: int | None = None
    drain: RegionDrain | None = None

    def share(self, now_unix: float) -> float:
        return share_now(self.drain, now_unix)

    def state(self, now_unix: float) -> str:
        return "active" if self.drain is None else self.drain.state(now_unix)

    def state_json(self) -> dict[str, Any]:
        """The region as one revision row keeps it (and as GET /v1/regions shows it)."""
        return {
            "name": self.name,
            "latitude": self.latitude_deg,
            "longitude": self.longitude_deg,
            "weight": self.weight,
            "drain": None if self.drain is None else self.drain.state_json(),
        }

    @staticmethod
    def from_state(state: dict[str, Any]) -> Region:
        name = str(state["name"])
        d = state.get("drain")
        lat, lon, weight = state.get("latitude"), state.get("longitude"), state.get("weight")
        return Region(
            name,
            None if lat is None else float(lat),
            None if lon is None else float(lon),
            None if weight is None else int(weight),
            None if d is None else RegionDrain(
                name, str(d["direction"]), float(d["started_unix"]), float(d["over_s"]),
                float(d["from_share"]),
            ),
        )  # fmt: skip


def check_region_fields(latitude: float, longitude: float, weight: int | None) -> None:
    """Raises ValueError naming the field that is out of range."""
    if not -90 <= latitude <= 90:
        raise ValueError(f"latitude must be between -90 and 90, got {latitude:g}")
    if not -180 <= longitude <= 180:
        raise ValueError(f"longitude must be between -180 and 180, got {longitude:g}")
    if weight is not None and not 0 <= weight <= 100:
        raise ValueError(f"weight must be between 0 and 100, got {weight}")


def share_now(drain: RegionDrain | None, now_unix: float) -> float:
    return 1.0 if drain is None else drain.share(now_unix)


def parse_duration_s(text: str) -> float:
    """`90`, `90s`, `5m`, `1h`, `30d` → seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 5m, 1h, 30d)")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86_400, None: 1}[m.group(2)]
