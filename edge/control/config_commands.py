"""`edge config set|unset|list NAME`: a function's deploy-time config values (edge.control.values).

They override its edge.toml [config] key by key, for every version, without a rebuild: each
change is one revision that nodes apply without recompiling. `--secret` values are never shown
again, by any command or API: only their names.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from edge.cli_output import JsonOption, Output
from edge.control.client import DEFAULT_URL
from edge.control.commands import ControlUrl, Token, _client
from edge.control.values import SECRET_SHOWN, parse_assignments

config_app = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="A function's deploy-time config values (over edge.toml).")
Name = Annotated[str, typer.Argument(metavar="NAME", help="function name, as in edge.toml")]


def _changed_line(result: dict[str, Any], what: str) -> str:
    if not result["changed"]:
        return f"{result['function']}: nothing changed (revision {result['revision']})"
    return f"{result['function']}: {what} (revision {result['revision']})"


@config_app.command("set")
def set_values(
    name: Name,
    pairs: Annotated[list[str], typer.Argument(metavar="KEY=VALUE...")],
    secret: Annotated[bool, typer.Option(
        "--secret", help="never show these values again (only their names)")] = False,
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOption = False,
) -> None:
    """Set config values of function NAME, in one revision (scope deploy)."""
    with Output(as_json) as out:
        values = parse_assignments(pairs)
        with _client(control, token) as client:
            result = client.set_config(name, dict(values), sorted(values) if secret else [])
        keys = ", ".join(f"{k} (secret)" if secret else k for k in values)
        out.result(result, _changed_line(result, f"set {keys}"))


@config_app.command("unset")
def unset_values(
    name: Name,
    keys: Annotated[list[str], typer.Argument(metavar="KEY...")],
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOption = False,
) -> None:
    """Remove config values of function NAME (its edge.toml values apply again)."""
    with Output(as_json) as out, _client(control, token) as client:
        result = client.set_config(name, dict.fromkeys(keys))
    out.result(result, _changed_line(result, f"unset {', '.join(keys)}"))


@config_app.command("list")
def list_values(
    name: Name, control: ControlUrl = DEFAULT_URL, token: Token = "", as_json: JsonOption = False
) -> None:
    """List what config.get reads in function NAME: its config values, and the stable
    version's edge.toml [config] keys they do not override. Secrets show as (secret)."""
    with Output(as_json) as out, _client(control, token) as client:
        result = client.config(name)
    out.result(result, lambda: out.show(config_table(result)))


def config_table(result: dict[str, Any]) -> Table:
    """One row per key config.get finds, with where its value comes from."""
    rows = {v["key"]: (SECRET_SHOWN if v["secret"] else v["value"], "edge config")
            for v in result["values"]}
    toml = result.get("edge_toml")
    if toml is not None:
        for key, value in toml["config"].items():
            rows.setdefault(key, (value, f"edge.toml v{toml['version']}"))
    table = Table("key", "value", "from")
    for key in sorted(rows):
        table.add_row(key, *rows[key])
    return table


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
