"""`edge region drain|undrain|set NAME` and `edge regions`: operator commands for regions.

Every command talks to the control plane (--control/--token or EDGE_CONTROL_URL/EDGE_TOKEN) and
prints a sentence, or with --json the API's answer unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
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
        return
    drain = result.get("drain") or {}
    ramp = f", ramp {drain['over_s']:g}s" if drain else ""
    same = "" if result.get("changed", True) else "; unchanged"
    console.print(f"{name}: {result['state']} (share {result['share']:.0%} now{ramp}{same}), "
                  f"revision {result['revision']}")


@region_app.command("set")
def set_region(
    name: str,
    lat: Annotated[float, typer.Option("--lat", help="latitude in degrees, -90..90")],
    lon: Annotated[float, typer.Option("--lon", help="longitude in degrees, -180..180")],
    weight: Annotated[
        int | None, typer.Option(help="0..100 (0: standby); default: keep the current")
    ] = None,
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOut = False,
) -> None:
    """Create or update region NAME: its location (for nearest-region spill) and weight."""
    try:
        with _client(control, token) as client:
            result = client.set_region(name, lat, lon, weight)
    except EdgeError as e:
        _fail(e)
    if as_json:
        _print_json(result)
        return
    w = "unset" if result["weight"] is None else result["weight"]
    same = "" if result["changed"] else " (unchanged)"
    console.print(f"{name}: {result['latitude']:g}, {result['longitude']:g}, weight {w}"
                  f"{same}, revision {result['revision']}")


def regions(control: ControlUrl = DEFAULT_URL, token: Token = "", as_json: JsonOut = False) -> None:
    """Every region: state, share of traffic now, weight, node health and requests/s."""
    try:
        with _client(control, token) as client:
            result = client.regions()
    except EdgeError as e:
        _fail(e)
    if as_json:
        _print_json(result)
        return
    table = Table("region", "state", "share", "weight", "health", "nodes", "traffic")
    for r in result["regions"]:
        table.add_row(*region_row(r))
    Console().print(table)  # the listing is output (stdout), like `edge status`


def region_row(r: dict[str, Any]) -> tuple[str, ...]:
    """One `edge regions` line from a GET /v1/regions entry."""
    healthy, nodes, stale = r["healthy_nodes"], r["nodes"], r.get("stale_nodes", 0)
    if nodes == 0:
        health = "no nodes"
    elif healthy == nodes:
        health = "healthy"
    elif healthy == 0:
        health = "down"
    else:
        health = "degraded"
    rate = r.get("requests_per_s")
    return (
        r["name"],
        r["state"],
        f"{r['share']:.0%}",
        "-" if r.get("weight") is None else str(r["weight"]),
        health,
        f"{healthy}/{nodes}" + (f" ({stale} stale)" if stale else ""),
        "-" if rate is None else f"{rate:.1f} req/s",
    )


def register(app: typer.Typer) -> None:
    app.add_typer(region_app, name="region")
    app.command()(regions)
