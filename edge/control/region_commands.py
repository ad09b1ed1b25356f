"""`edge region drain|undrain|set NAME` and `edge regions`: operator commands for regions.

Every command talks to the control plane (--control/--token or EDGE_CONTROL_URL/EDGE_TOKEN) and
prints a sentence, or with --json the API's answer unchanged. `drain|undrain --wait` follows the
ramp with a progress bar of the share and returns when it is over (--json: the region's final
entry merged into the answer, with `waited_s`).
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from edge.cli_output import JsonOption, Output
from edge.control.client import DEFAULT_URL, ControlClient, ramp_progress, wait_for_region
from edge.control.commands import ControlUrl, Token, _client
from edge.control.regions import parse_duration_s
from edge.errors import BadRequest

region_app = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="Drain and undrain regions.")

Wait = Annotated[
    bool, typer.Option("--wait", help="show the share as it ramps and return when it is done")
]


def _over(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration_s(text)
    except ValueError as e:
        raise BadRequest(str(e)) from None


@region_app.command()
def drain(
    name: str,
    over: Annotated[str | None, typer.Option("--over", help="ramp length: 30s, 5m (default 5m)")]
    = None,
    wait: Wait = False,
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOption = False,
) -> None:
    """Lower NAME's share of traffic to zero over --over; DNS answers move to the next region."""
    _change(name, "drain", over, wait, control, token, as_json)


@region_app.command()
def undrain(
    name: str,
    over: Annotated[str | None, typer.Option("--over", help="ramp length (default: at once)")]
    = None,
    wait: Wait = False,
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOption = False,
) -> None:
    """Bring NAME back to its full share of traffic."""
    _change(name, "undrain", over, wait, control, token, as_json)


def _change(name: str, action: str, over: str | None, wait: bool, control: str, token: str,
            as_json: bool) -> None:
    with Output(as_json) as out, _client(control, token) as client:
        result = client.region(name, action, _over(over))
        if action == "drain" and _none_serving(client.regions()["regions"]):
            out.note("warning: every region with nodes is now draining or drained, so none is "
                     "left to take its traffic: DNS answers fail open to the drained regions' "
                     "nodes (undrain one with `edge region undrain NAME`)")
        if wait:
            start = time.monotonic()
            final = _wait(out, client, name, action)
            result = {**result, **final, "waited_s": round(time.monotonic() - start, 3)}
    drain = result.get("drain") or {}
    ramp = f", ramp {drain['over_s']:g}s" if drain else ""
    same = "" if result.get("changed", True) else "; unchanged"
    waited = f" after {result['waited_s']:.1f} s" if "waited_s" in result else ""
    out.result(result, f"{name}: {result['state']} (share {result['share']:.0%} now{ramp}{same})"
                       f"{waited}, revision {result['revision']}")


def _none_serving(regions: list[dict[str, Any]]) -> bool:
    """Whether there are nodes, but no region of them keeps (or regains) its share."""
    with_nodes = [r for r in regions if r["nodes"]]
    return bool(with_nodes) and all(r["state"] in ("draining", "drained") for r in with_nodes)


def _wait(out: Output, client: ControlClient, name: str, action: str) -> dict[str, Any]:
    with out.progress(f"{name} {action}") as bar:

        def show(region: dict[str, Any], left_s: float) -> None:
            left = f", {math.ceil(left_s)} s left" if left_s else ""
            bar.update(ramp_progress(region) * 100, 100,
                       f"share {region['share']:.0%} ({region['state']}{left})")

        return wait_for_region(client.regions, name, action, on_progress=show)


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
    as_json: JsonOption = False,
) -> None:
    """Create or update region NAME: its location (for nearest-region spill) and weight."""
    with Output(as_json) as out, _client(control, token) as client:
        result = client.set_region(name, lat, lon, weight)
    w = "unset" if result["weight"] is None else result["weight"]
    same = "" if result["changed"] else " (unchanged)"
    out.result(result, f"{name}: {result['latitude']:g}, {result['longitude']:g}, weight {w}"
                       f"{same}, revision {result['revision']}")


def regions(
    control: ControlUrl = DEFAULT_URL, token: Token = "", as_json: JsonOption = False
) -> None:
    """Every region: state, share of traffic now, weight, node health and requests/s."""
    with Output(as_json) as out, _client(control, token) as client:
        result = client.regions()
    table = Table("region", "state", "share", "weight", "health", "nodes", "traffic")
    for r in result["regions"]:
        table.add_row(*region_row(r))
    out.result(result, lambda: out.show(table))


def region_row(r: dict[str, Any]) -> tuple[str, ...]:
    """One `edge regions` line from a GET /v1/regions entry. Health counts `up_nodes` (the
    control plane's own checks) where the server sends it."""
    healthy = r.get("up_nodes", r["healthy_nodes"])
    nodes, stale = r["nodes"], r.get("stale_nodes", 0)
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
