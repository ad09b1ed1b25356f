"""The geo database behind steering: an .mmdb file read with maxminddb, reloadable in place.

We read maxminddb directly (not geoip2's models) because steering needs the DB network each
record holds for (`get_with_prefix_len`) to compute ECS scopes, plus four fields.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import maxminddb

from edge.errors import ConfigError
from edge.traffic.regions import IPAddress
from edge.traffic.steering import GeoHit, Location

# A corrupt file can open fine and fail only when a record is decoded: probe real records at
# load time (London in both the MaxMind test DBs and the real ones) so it fails at start.
PROBE_ADDRESSES = ("81.2.69.142", "2001:218::1", "8.8.8.8")


def default_database() -> Path:
    """The world-wide GeoLite2-City shipped by the `maxminddb-geolite2` package."""
    from _maxminddb_geolite2 import geolite2_database

    return Path(geolite2_database())


def _open(path: Path) -> Any:
    try:
        reader = maxminddb.open_database(str(path))
    except FileNotFoundError:
        raise ConfigError(f"geoip database {path}: file not found") from None
    except (maxminddb.InvalidDatabaseError, ValueError, OSError) as e:
        raise ConfigError(f"geoip database {path} is not a valid MaxMind DB: {e}") from None
    try:
        for ip in PROBE_ADDRESSES:
            if ":" in ip and reader.metadata().ip_version == 4:
                continue
            reader.get_with_prefix_len(ip)
    except (maxminddb.InvalidDatabaseError, ValueError, OSError) as e:
        reader.close()
        raise ConfigError(f"geoip database {path} is not a valid MaxMind DB: {e}") from None
    return reader


def _location(record: Any) -> Location | None:
    if not isinstance(record, dict):
        return None
    country = record.get("country", {}).get("iso_code")
    continent = record.get("continent", {}).get("code")
    loc = record.get("location", {})
    return Location(
        country=country if isinstance(country, str) else None,
        continent=continent if isinstance(continent, str) else None,
        latitude_deg=_float(loc.get("latitude")),
        longitude_deg=_float(loc.get("longitude")),
    )


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class GeoDB:
    """Owns one open reader at a time. `reload` swaps in a new file only if it loads cleanly."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else default_database()
        self._reader: Any = _open(self.path)

    def reload(self, path: Path | None = None) -> None:
        """Open `path` (default: the current file again). On a bad file raise ConfigError and
        keep serving from the previous database."""
        new_path = path if path is not None else self.path
        new = _open(new_path)
        # The old reader is dropped, not closed: a query on another thread may hold it
        # mid-lookup; it is unmapped when the last reference goes.
        self._reader, self.path = new, new_path

    def locate(self, addr: IPAddress) -> GeoHit:
        reader = self._reader  # once: a reload may swap it meanwhile
        if reader is None:
            raise ValueError("GeoDB is closed")
        bits = addr.max_prefixlen
        if addr.version == 6 and reader.metadata().ip_version == 4:
            return GeoHit(None, ipaddress.ip_network((addr, 0)))
        try:
            record, prefix = reader.get_with_prefix_len(addr)
        except (maxminddb.InvalidDatabaseError, ValueError):
            # A file that breaks mid-tree must not break DNS: no location, scope the full address.
            return GeoHit(None, ipaddress.ip_network((addr, bits)))
        return GeoHit(_location(record), ipaddress.ip_network((addr, prefix), strict=False))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> GeoDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
