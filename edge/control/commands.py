"""CLI commands for the control plane: `edge control` (the server) and the client commands
`deploy`, `versions`, `rollback`, `canary`, `promote`, `status`.

Register them on the main CLI with `register(app)`; `python -m edge.control` runs them alone.
Every client command takes --control/EDGE_CONTROL_URL, --token/EDGE_TOKEN and --json.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edge.config.function import parse_function_config
from edge.config.toml_fields import load_toml
from edge.control.client import DEFAULT_URL, ControlClient, Convergence
from edge.errors import BadRequest, BuildFailed, EdgeError

ControlUrl = Annotated[
    str, typer.Option("--control", envvar="EDGE_CONTROL_URL", help="control plane URL")
]
Token = Annotated[str, typer.Option("--token", envvar="EDGE_TOKEN", help="API token")]
JsonOut = Annotated[bool, typer.Option("--json", help="print the result as JSON")]

console = Console(stderr=True)


def _fail(error: EdgeError) -> NoReturn:
    print(f"error: {error.message}", file=sys.stderr)
    if isinstance(error, BuildFailed) and error.output:
        print(error.output.rstrip(), file=sys.stderr)
    raise typer.Exit(1)


@contextmanager
def _client(url: str, token: str) -> Iterator[ControlClient]:
    if not token:
        _fail(BadRequest("no token: pass --token or set EDGE_TOKEN"))
    try:
        with ControlClient(url, token) as client:
            yield client
    except EdgeError as e:
        _fail(e)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _print_change(result: dict[str, Any], what: str) -> None:
    d = result["deployment"]
    if not result["changed"]:
        print(f"{d['function']}: nothing changed (revision {result['revision']})")
        return
    canary = f", canary v{d['canary']} at {d['canary_percent']}%" if d["canary"] else ""
    print(f"{d['function']}: {what}: stable v{d['stable']}{canary} "
          f"(revision {result['revision']})")


def serve(
    data: Annotated[Path, typer.Option("--data", help="data directory (created if new)")],
    listen: Annotated[str, typer.Option(help="HOST:PORT")] = "127.0.0.1:7000",
) -> None:
    """Run the control plane. The first start creates tenant "default" and prints its tokens."""
    from edge.control.server import run_control

    try:
        asyncio.run(run_control(data, listen))
    except EdgeError as e:
        _fail(e)
    except KeyboardInterrupt:
        pass


def _build(project: Path, component: Path | None) -> Path:
    if component is not None:
        return component
    try:
        from edge.build import build_function
    except ImportError:
        _fail(BadRequest("building is not available here; pass --component FILE"))
    return build_function(project)


def deploy(
    project: Annotated[Path, typer.Argument(help="function project (edge.toml)")] = Path("."),
    route: Annotated[
        list[str] | None, typer.Option("--route", help="HOST/PATH; repeat; default: keep")
    ] = None,
    component: Annotated[
        Path | None, typer.Option(help="a built component; skips the build")
    ] = None,
    message: Annotated[str, typer.Option("--message", "-m")] = "",
    timeout_s: Annotated[float, typer.Option("--timeout-s", help="wait for nodes")] = 60.0,
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOut = False,
) -> None:
    """Build PROJECT, upload it as a new version, make it stable, and wait for every node."""
    try:
        manifest = load_toml(project / "edge.toml")
        config = parse_function_config(manifest, str(project / "edge.toml"))
        data = _build(project, component).read_bytes()
    except EdgeError as e:
        _fail(e)
    except OSError as e:
        _fail(BadRequest(f"cannot read component: {e}"))
    with _client(control, token) as client:
        version = client.upload_version(config.name, data, manifest, message)
        result = client.deploy(config.name, version["number"], route or None)
        revision = int(result["revision"])
        if as_json:
            state = client.wait_for(revision, timeout_s)
        else:
            print(f"{config.name}: uploaded v{version['number']} ({len(data)} bytes, "
                  f"sha256 {version['sha256'][:12]})", file=sys.stderr)
            state = _wait_with_progress(client, revision, timeout_s)
    if as_json:
        _print_json({"version": version, "deploy": result, "convergence": _conv_json(state)})
    else:
        _print_change(result, f"deployed v{version['number']}")
        for node_id in state.stale:
            print(f"warning: node {node_id} has stopped reporting; not waited for",
                  file=sys.stderr)
    if not state.converged:
        if not as_json:
            print(f"error: after {timeout_s:g}s these nodes have not applied revision "
                  f"{revision}: {', '.join(state.laggards)}", file=sys.stderr)
        raise typer.Exit(1)


def _conv_json(c: Convergence) -> dict[str, Any]:
    return {"revision": c.revision, "converged": c.converged, "current": list(c.current),
            "laggards": list(c.laggards), "stale": list(c.stale),
            "elapsed_s": round(c.elapsed_s, 3)}


def _wait_with_progress(client: ControlClient, revision: int, timeout_s: float) -> Convergence:
    with Progress(
        TextColumn("[bold]revision {task.fields[revision]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} nodes  {task.fields[waiting]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("nodes", total=None, revision=revision, waiting="")

        def show(c: Convergence) -> None:
            waiting = ("waiting: " + ", ".join(c.laggards[:5])) if c.laggards else ""
            progress.update(task, total=len(c.current) + len(c.laggards) or 1,
                            completed=len(c.current) if c.current or c.laggards else 1,
                            waiting=waiting)

        return client.wait_for(revision, timeout_s, on_progress=show)


def versions(
    name: str, control: ControlUrl = DEFAULT_URL, token: Token = "", as_json: JsonOut = False
) -> None:
    """List a function's versions and which are stable and canary."""
    with _client(control, token) as client:
        result = client.versions(name)
    if as_json:
        _print_json(result)
        return
    d = result["deployment"] or {}
    table = Table("version", "", "sha256", "size", "author", "message")
    for v in reversed(result["versions"]):
        mark = ("stable" if v["number"] == d.get("stable")
                else f"canary {d.get('canary_percent')}%" if v["number"] == d.get("canary")
                else "")
        table.add_row(str(v["number"]), mark, v["sha256"][:12], str(v["size"]), v["author"],
                      v["message"])
    Console().print(table)


def rollback(
    name: str,
    to: Annotated[int | None, typer.Option("--to", help="version (default: previous stable)")]
    = None,
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOut = False,
) -> None:
    """Go back to the previous stable version, or to --to N. Drops any canary."""
    with _client(control, token) as client:
        result = client.rollback(name, to)
    _print_json(result) if as_json else _print_change(result, "rolled back")


def canary(
    name: str,
    version: int,
    percent: Annotated[int, typer.Option("--percent", min=0, max=100)],
    sticky: Annotated[str | None, typer.Option(help="ip or cookie:NAME")] = None,
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOut = False,
) -> None:
    """Send PERCENT of clients (sticky per client) to VERSION."""
    with _client(control, token) as client:
        result = client.canary(name, version, percent, sticky)
    _print_json(result) if as_json else _print_change(result, "canary")


def promote(
    name: str, control: ControlUrl = DEFAULT_URL, token: Token = "", as_json: JsonOut = False
) -> None:
    """Make the canary the stable version for everyone."""
    with _client(control, token) as client:
        result = client.promote(name)
    _print_json(result) if as_json else _print_change(result, "promoted")


def status(control: ControlUrl = DEFAULT_URL, token: Token = "", as_json: JsonOut = False) -> None:
    """The current revision and, per region and node, what is applied and when last seen."""
    with _client(control, token) as client:
        result = client.status()
    if as_json:
        _print_json(result)
        return
    out = Console()
    out.print(f"revision {result['revision']}")
    table = Table("node", "region", "applied", "healthy", "last seen", "convergence")
    for n in result["nodes"]:
        seen = f"{n['last_seen_s_ago']:.0f}s ago" + (" (stale)" if n["stale"] else "")
        conv = "" if n["convergence_ms"] is None else f"{n['convergence_ms']:.0f} ms"
        table.add_row(n["id"], n["region"], str(n["applied_revision"]),
                      "yes" if n["healthy"] else "NO", seen, conv)
    out.print(table)
    for f in result.get("functions", []):
        canary_text = f", canary v{f['canary']} {f['canary_percent']}%" if f["canary"] else ""
        out.print(f"{f['function']}: stable v{f['stable']}{canary_text} "
                  f"routes {' '.join(f['routes']) or '-'}")


def register(app: typer.Typer) -> None:
    """Adds `control`, `deploy`, `versions`, `rollback`, `canary`, `promote`, `status`."""
    app.command("control")(serve)
    for command in (deploy, versions, rollback, canary, promote, status):
        app.command()(command)


control_app = typer.Typer(no_args_is_help=True, add_completion=False,
                          help="The edge control plane and its client commands.")
register(control_app)
