"""Deploy-time configuration values: per function, set without a rebuild, over edge.toml.

A function's `config.get(key)` reads its version's edge.toml `[config]` table with these values
over it, key by key. They belong to the function (tenant-scoped), not to a version: setting one
is a "config" revision, and nodes get it in the signed snapshot like any other change. A secret
value reaches nodes (the function must read it) but no API answer, listing or log line: only its
name, marked secret. The same rules bind the API (typed 400s) and snapshot verification.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge.control.errors import (
    BadConfigKey,
    BadConfigValue,
    ConfigValueTooLarge,
    TooManyConfigKeys,
)
from edge.errors import BadRequest, UsageError

# Like an environment variable or a TOML bare key, so any edge.toml key one would write can be
# overridden; dots and dashes allowed for "db.url"-style names.
KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")  # fullmatch: "$" admits a final "\n"
MAX_KEYS = 64
MAX_VALUE_BYTES = 8 * 1024  # Cloudflare and Fastly allow a few KiB; a certificate fits
SECRET_SHOWN = "(secret)"  # what listings and revision diffs say instead of a secret value


@dataclass(frozen=True)
class ConfigValue:
    key: str
    value: str
    secret: bool

    def to_json(self) -> dict[str, Any]:
        """For every answer: a secret's value is never in it."""
        return {"key": self.key, "secret": self.secret,
                "value": None if self.secret else self.value}

    def shown(self) -> str:
        return SECRET_SHOWN if self.secret else self.value


def check_key(key: object) -> str:
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise BadConfigKey(
            f"bad config key {str(key)[:140]!r}: 1-128 letters, digits, '_', '.' and '-', "
            "starting with a letter or '_'"
        )
    return key


def check_value(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise BadConfigValue(f"config value of {key!r} must be a string")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:  # a lone surrogate, which JSON's \ud800 escapes can carry
        raise BadConfigValue(f"config value of {key!r} is not valid Unicode") from None
    if size > MAX_VALUE_BYTES:
        raise ConfigValueTooLarge(
            f"config value of {key!r} is {size} bytes; at most {MAX_VALUE_BYTES}"
        )
    return value


def check_count(count: int) -> None:
    if count > MAX_KEYS:
        raise TooManyConfigKeys(f"a function has at most {MAX_KEYS} config values, not {count}")


def check_values(values: Mapping[Any, Any]) -> dict[str, str]:
    """A complete set of values (as a snapshot carries them), every rule applied."""
    check_count(len(values))
    return {check_key(k): check_value(k, v) for k, v in values.items()}


def parse_change(body: Mapping[str, Any]) -> tuple[dict[str, str | None], frozenset[str]]:
    """`PUT .../config` body: {"values": {key: string, or null to remove}, "secret": [keys]}.
    Every key in "secret" must be one set (to a string) by the same request."""
    raw = body.get("values")
    if not isinstance(raw, dict) or not raw:
        raise BadRequest("body must be {\"values\": {KEY: string or null}, \"secret\": [KEY]}")
    check_count(len(raw))
    changes = {check_key(k): None if v is None else check_value(k, v) for k, v in raw.items()}
    secret = body.get("secret", [])
    if not isinstance(secret, list) or not all(isinstance(k, str) for k in secret):
        raise BadRequest("secret must be a list of keys")
    stray = [k for k in secret if changes.get(k) is None]
    if stray:
        raise BadRequest(f"secret names {stray[0]!r}, which this request does not set")
    return changes, frozenset(secret)


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """["KEY=VALUE", ...] → {KEY: VALUE}; the value may hold "=" (split at the first one)."""
    values: dict[str, str] = {}
    for i, pair in enumerate(pairs, 1):
        key, eq, value = pair.partition("=")
        if not eq or not key:  # not echoed: it may be a secret typed without its key
            raise UsageError(f"expected KEY=VALUE: argument {i} has no KEY= before its value")
        values[key] = value
    return values
