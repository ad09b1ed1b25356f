"""`edge`: the one command line for developers and operators."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer

from edge.errors import BuildFailed, EdgeError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Edge functions on WebAssembly.")


def _fail(error: EdgeError) -> None:
    print(f"error: {error.message}", file=sys.stderr)
    if isinstance(error, BuildFailed) and error.output:
        print(error.output.rstrip(), file=sys.stderr)
    raise typer.Exit(1)


@app.command()
def new(
    name: str,
    lang: Annotated[str, typer.Option(help="python, c or js")] = "python",
    directory: Annotated[Path | None, typer.Option("--dir", help="where (default ./NAME)")] = None,
) -> None:
    """Create a function project: edge.toml, a source file and a README."""
    from edge.build.scaffold import new_project

    dest = directory or Path(name)
    try:
        files = new_project(dest, name, lang)
    except EdgeError as e:
        _fail(e)
    for f in files:
        print(f"created {f}")
    print(f"next: edge dev {dest}")


@app.command()
def build(project: Annotated[Path, typer.Argument()] = Path(".")) -> None:
    """Compile the function in PROJECT to a WebAssembly component in PROJECT/build/."""
    from edge.build import build_function

    try:
        out = build_function(project)
    except EdgeError as e:
        _fail(e)
    print(out)


@app.command()
def dev(
    project: Annotated[Path, typer.Argument()] = Path("."),
    port: int = 8787,
    host: str = "127.0.0.1",
) -> None:
    """Serve PROJECT locally on the production runtime, rebuilding on save."""
    from edge.dev import serve_dev

    try:
        serve_dev(project, host, port)
    except EdgeError as e:
        _fail(e)
    except KeyboardInterrupt:
        pass


@app.command()
def node(
    config: Annotated[Path | None, typer.Option("--config", help="node.toml")] = None,
    control: Annotated[str | None, typer.Option(help="control plane URL to follow")] = None,
    region: Annotated[str | None, typer.Option(help="this node's region")] = None,
    node_id: Annotated[str | None, typer.Option("--id", help="this node's id")] = None,
    listen: Annotated[str | None, typer.Option(help="HOST:PORT")] = None,
    token: Annotated[str | None, typer.Option(envvar="EDGE_NODE_TOKEN", help="node token")] = None,
    public_key: Annotated[
        str | None, typer.Option(envvar="EDGE_PUBLIC_KEY", help="control plane key (hex)")
    ] = None,
    state_dir: Annotated[Path | None, typer.Option(help="where applied state is kept")] = None,
) -> None:
    """Run an edge node: from a node.toml, or following a control plane (--control)."""
    from edge.node.main import node_config_from_args, run_node

    if config is None and control is None:
        print("error: give --config node.toml or --control URL", file=sys.stderr)
        raise typer.Exit(2)
    try:
        settings = node_config_from_args(
            config, control, region, node_id, listen, token, public_key, state_dir
        )
        asyncio.run(run_node(settings))
    except EdgeError as e:
        _fail(e)
    except KeyboardInterrupt:
        pass


@app.command()
def up(
    state_dir: Annotated[Path, typer.Option(help="where the stack keeps its state")] = Path(
        ".edge-up"
    ),
    control_port: int = 7070,
    node_port: int = 8787,
    dns_port: int = 5353,
) -> None:
    """The whole system on loopback: control plane, three regions, geo-DNS, a deployed example."""
    from edge.up import UpSettings, run_up

    try:
        run_up(UpSettings(state_dir.resolve(), control_port, node_port, dns_port))
    except EdgeError as e:
        _fail(e)


def _register_subsystems() -> None:
    from edge.control import admin_commands, region_commands
    from edge.control.commands import register
    from edge.traffic.main import dns

    register(app)
    region_commands.register(app)
    admin_commands.register(app)
    app.command()(dns)


_register_subsystems()


def main() -> None:
    app()
