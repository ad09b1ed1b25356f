"""Region drain state as the control plane keeps it, and what it means at a given time (pure).

A drain or undrain is a linear ramp of the region's share of traffic from where it stood when
the operator asked, to 0 (drain) or 1 (undrain), over `over_s` seconds. The DNS server and the
nodes turn the share into answers and spills; this module only says what the share is.
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


def share_now(drain: RegionDrain | None, now_unix: float) -> float:
    return 1.0 if drain is None else drain.share(now_unix)


def parse_duration_s(text: str) -> float:
    """`90`, `90s`, `5m`, `1h` → seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 5m, 1h)")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
