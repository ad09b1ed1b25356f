"""Spin's application variables are edge's configuration values: `variables.get("name")` reads
edge.toml's `[config]` table, then `edge config set` / `--var` / `.dev.vars`, as
`edge_sdk.config.get` does."""

from __future__ import annotations

from dataclasses import dataclass

from edge_sdk import config


@dataclass
class ErrorUndefined:
    value: str


class Err(Exception):
    """Raised as Spin's SDK raises its errors: the error itself is `value`."""

    def __init__(self, value: ErrorUndefined) -> None:
        super().__init__(value)
        self.value = value


def get(name: str) -> str:
    """The value of variable `name`; an unset one raises Err(ErrorUndefined(...)), as on Spin."""
    value = config.get(name)
    if value is None:
        raise Err(ErrorUndefined(f"no variable named {name!r}"))
    return value
