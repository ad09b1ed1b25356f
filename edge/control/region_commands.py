"""`edge region drain|undrain NAME` and `edge regions`: operator commands for regions."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edge.control.client import DEFAULT_URL
from edge.control.commands import (
    ControlUrl,
    JsonOut,
    Token,
    _client,
    _fail,
    _print_json,
    console,
)
from edge.control.regions import parse_duration_s
from edge.errors import BadRequest, EdgeError

region_app = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="Drain and undrain regions.")


def _over(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration_s(text)
    except ValueError as e:
        _fail(BadRequest(str(e)))


@region_app.command()
def drain(
    name: str,
    over: Annotated[str | None, typer.Option("--over", help="ramp length: 30s, 5m (default 5m)")]
    = None,
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOut = False,
) -> None:
    """Lower NAME's share of traffic to zero over --over; DNS answers move to the next region."""
    _change(name, "drain", _over(over), control, token, as_json)


@region_app.command()
def undrain(
    name: str,
    over: Annotated[str | None, typer.Option("--over", help="ramp length (default: at once)")]
    = None,
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOut = False,
) -> None:
    """Bring NAME back to its full share of traffic."""
    _change(name, "undrain", _over(over), control, token, as_json)


def _change(name: str, action: str, over_s: float | None, control: str, token: str,
            as_json: bool) -> None:
    try:
        with _client(control, token) as client:
            result = client.region(name, action, over_s)
    except EdgeError as e:
        _fail(e)
    if as_json:
        _print_json(result)
    else:
        console.print(f"{name}: {result['state']} (share {result['share']:.0%} now, ramp "
                      f"{result['over_s']:g}s)")


def regions(control: ControlUrl = DEFAULT_URL, token: Token = "", as_json: JsonOut = False) -> None:
    """Every region: drain state, share of traffic now, and nodes (healthy / all)."""
    try:
        with _client(control, token) as client:
            result = client.regions()
    except EdgeError as e:
        _fail(e)
    if as_json:
        _print_json(result)
        return
    table = Table("region", "state", "share", "nodes healthy/all")
    for r in result["regions"]:
        table.add_row(r["name"], r["state"], f"{r['share']:.0%}",
                      f"{r['healthy_nodes']}/{r['nodes']}")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(region_app, name="region")
    app.command()(regions)
