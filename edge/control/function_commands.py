"""`edge function list`: this tenant's functions (scope read), and `edge function delete NAME`:
take a function out of service (scope deploy).

Its deployment and routes go in one revision, so nodes answer its routes 404 no_route from
their next snapshot on. Its versions stay: `edge versions NAME` lists them, and `edge deploy`
of the same name makes it live again (give it --route: a deleted function has none).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Column, Table

from edge.cli_output import JsonOption, Output, utc_time
from edge.control.client import DEFAULT_URL
from edge.control.commands import ControlUrl, Token, _client

function_app = typer.Typer(no_args_is_help=True, add_completion=False,
                           help="List and manage functions.")


def _canary(f: dict[str, Any]) -> str:
    return "-" if f["canary"] is None else f"v{f['canary']} at {f['canary_percent']}%"


@function_app.command("list")
def list_functions(
    deleted: Annotated[bool, typer.Option("--deleted", help="deleted functions too")] = False,
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOption = False,
) -> None:
    """This tenant's functions: deployed (stable) version, canary, routes, number of versions
    and last change. Deleted ones only with --deleted. --json: {"functions": [...]} as
    GET /v1/functions answers (creation times too)."""
    with Output(as_json) as out, _client(control, token) as client:
        result = client.functions(deleted)
    listed = result["functions"]
    # Creation times are in --json: the table fits 80 columns without them.
    table = Table("function", "stable", "canary", "versions", Column("routes", overflow="fold"),
                  Column("updated", no_wrap=True))
    for f in listed:
        stable = "deleted" if f["deleted"] else "-" if f["stable"] is None else f"v{f['stable']}"
        table.add_row(f["name"], stable, _canary(f), str(f["version_count"]),
                      " ".join(f["routes"]) or "-", utc_time(f["updated_unix"]))
    empty = "no functions" + ("" if deleted else " (deleted ones: --deleted)")
    out.result(result, lambda: out.show(table) if listed else out.show(empty))


def _deleted_line(result: dict[str, Any]) -> str:
    name, gone = result["function"], result["deleted"]
    if gone is None:
        return f"{name}: not deployed, nothing to delete (revision {result['revision']})"
    was = f"stable v{gone['stable']}" + (f", canary v{gone['canary']}" if gone["canary"] else "")
    routes = " ".join(gone["routes"]) or "-"
    return (f"{name}: deleted at revision {result['revision']} (was {was}, routes {routes}); "
            f"its versions are kept (edge versions {name})")


@function_app.command("delete")
def delete(
    name: Annotated[str, typer.Argument(metavar="NAME", help="as in edge.toml")],
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOption = False,
) -> None:
    """Stop serving function NAME: remove its deployment and routes (nodes answer them 404
    no_route). Its versions stay, for `edge versions` and a later `edge deploy`. --json: the
    revision and the deployment removed (null if it was not deployed)."""
    with Output(as_json) as out, _client(control, token) as client:
        result = client.delete_function(name)
    out.result(result, _deleted_line(result))


def register(app: typer.Typer) -> None:
    app.add_typer(function_app, name="function")
