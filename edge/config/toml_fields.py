"""Reading typed values out of a parsed TOML table, with errors that name file, key and rule."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from edge.errors import ConfigError

T = TypeVar("T")


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not valid TOML: not UTF-8 ({e.reason} at byte {e.start})"
        ) from None
    except OSError as e:  # a directory, no permission: a server re-reading it must not crash
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None


class Table:
    """One TOML table plus where it came from, so every error can say `file: [table] key: ...`."""

    def __init__(self, data: Any, source: str, name: str = "") -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        self.data: dict[str, Any] = data
        self.source = source
        self.name = name

    def where(self, key: str) -> str:
        return f"{self.source}: {self.name + '.' if self.name else ''}{key}"

    def table(self, key: str) -> Table:
        full = f"{self.name}.{key}" if self.name else key
        return Table(self.data.get(key, {}), self.source, full)

    def tables(self, key: str) -> list[Table]:
        items = self.data.get(key, [])
        if not isinstance(items, list):
            raise ConfigError(f"{self.where(key)} must be an array of tables ([[{key}]])")
        return [Table(item, self.source, f"{key}[{i}]") for i, item in enumerate(items)]

    def reject_unknown(self, allowed: set[str]) -> None:
        unknown = sorted(set(self.data) - allowed)
        if unknown:
            raise ConfigError(
                f"{self.where(unknown[0])}: unknown key; allowed keys: {', '.join(sorted(allowed))}"
            )

    def get(self, key: str, kind: type[T], default: T) -> T:
        value = self.data.get(key, default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(
                f"{self.where(key)} must be {kind.__name__}, got {type(value).__name__}"
            )
        return value

    def require(self, key: str, kind: type[T]) -> T:
        if key not in self.data:
            raise ConfigError(f"{self.where(key)} is required")
        value = self.data[key]
        return self.get(key, kind, value)  # type: ignore[no-any-return]

    def positive_int(self, key: str, default: int, maximum: int) -> int:
        value = self.get(key, int, default)
        if not 0 < value <= maximum:
            raise ConfigError(f"{self.where(key)} must be between 1 and {maximum}, got {value}")
        return value

    def choice(self, key: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in allowed:
            raise ConfigError(
                f"{self.where(key)} must be one of {', '.join(allowed)}, got {value!r}"
            )
        return value

    def string_map(self, key: str) -> dict[str, str]:
        table = self.table(key)
        out: dict[str, str] = {}
        for k, v in table.data.items():
            if not isinstance(v, str):
                raise ConfigError(f"{table.where(k)} must be a string, got {type(v).__name__}")
            out[k] = v
        return out

    def ip_address(
        self, key: str, value: str, version: int
    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """`value` (read from `key`) as an address of IP `version`, or a ConfigError."""
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            raise ConfigError(f"{self.where(key)}: not an IP address: {value!r}") from None
        if addr.version != version:
            raise ConfigError(f"{self.where(key)} must be an IPv{version} address, got {value!r}")
        return addr
