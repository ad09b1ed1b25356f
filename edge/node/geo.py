"""Geo fields for a client address, from a GeoIP2 / GeoLite2 City or Country database."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import geoip2.database
import geoip2.errors
import maxminddb

from edge.errors import ConfigError
from edge.sandbox.abi import Geo

NO_GEO = Geo()


class GeoLookup:
    def __init__(self, path: Path) -> None:
        try:
            self._reader = geoip2.database.Reader(str(path))
            self._kind = self._reader.metadata().database_type
            # A corrupt file can open fine and fail on the first search: probe it now, at start.
            self._lookup("81.2.69.142")
        except FileNotFoundError:
            raise ConfigError(f"geoip database {path}: file not found") from None
        except (maxminddb.InvalidDatabaseError, ValueError, OSError) as e:
            raise ConfigError(f"geoip database {path} is not a valid MaxMind DB: {e}") from None
        self.path = path

    def _lookup(self, ip: str) -> Geo:
        if "City" in self._kind:
            c = self._reader.city(ip)
            return Geo(
                country=c.country.iso_code,
                continent=c.continent.code,
                city=c.city.names.get("en"),
                latitude=c.location.latitude,
                longitude=c.location.longitude,
            )
        r = self._reader.country(ip)
        return Geo(country=r.country.iso_code, continent=r.continent.code)

    def lookup(self, ip: str) -> Geo:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return NO_GEO
        if not addr.is_global:
            return NO_GEO
        try:
            return self._lookup(ip)
        except geoip2.errors.AddressNotFoundError:
            return NO_GEO
        except (maxminddb.InvalidDatabaseError, ValueError):
            # A database that breaks mid-file must not fail the request; geo is optional.
            return NO_GEO

    def close(self) -> None:
        self._reader.close()
