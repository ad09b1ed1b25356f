"""`edge`: the one command line for developers and operators."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from edge.cli_output import EXIT_USAGE, JsonOption, Output, run_app
from edge.errors import UsageError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Edge functions on WebAssembly.")


@app.command()
def new(
    name: str,
    lang: Annotated[str, typer.Option(help="python, c or js")] = "python",
    directory: Annotated[Path | None, typer.Option("--dir", help="where (default ./NAME)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a function project: edge.toml, a source file and a README."""
    from edge.build.scaffold import new_project

    dest = directory or Path(name)
    with Output(as_json) as out:
        files = new_project(dest, name, lang)
    out.result(
        {"function": name, "lang": lang, "project": str(dest), "files": [str(f) for f in files]},
        "".join(f"created {f}\n" for f in files) + f"next: edge dev {dest}",
    )


@app.command()
def build(project: Annotated[Path, typer.Argument()] = Path("."), as_json: JsonOption = False,
          ) -> None:
    """Compile the function in PROJECT to a WebAssembly component in PROJECT/build/.

    Ends with one line: the component's path, size, build time and whether the cache had it."""
    from edge.build.report import build_with_progress, summary

    with Output(as_json) as out:
        built = build_with_progress(out, project)
    out.result(built.to_json(), summary(built))


@app.command()
def dev(
    project: Annotated[Path, typer.Argument()] = Path("."),
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8787,
    host: str = "127.0.0.1",
    compiler: Annotated[
        str,
        typer.Option(
            help="winch: compiles ~5x faster, slower code; cranelift: as production nodes"
        ),
    ] = "winch",
    var: Annotated[list[str] | None, typer.Option(
        "--var", metavar="KEY=VALUE",
        help="a config value over edge.toml and PROJECT/.dev.vars (as `edge config set`); repeat",
    )] = None,
    as_json: JsonOption = False,
) -> None:
    """Serve PROJECT locally on the production runtime, rebuilding on save.

    --var values, then PROJECT/.dev.vars ones (KEY=VALUE lines; git-ignored, for secrets), lie
    over edge.toml's config table as `edge config set` values do on nodes.

    --json: one event per line on stdout (built, build_failed, change, ready, vars, ...)."""
    from edge.dev import serve_dev
    from edge.dev_vars import parse_var_options
    from edge.sandbox.engine import check_compiler

    out = Output(as_json)
    try:
        check_compiler(compiler, "--compiler", UsageError)
        var_options = parse_var_options(var or [])
    except UsageError as e:
        out.fail(e, EXIT_USAGE)
    with out, contextlib.suppress(KeyboardInterrupt):
        serve_dev(project, host, port, out, compiler, var_options)


node_app = typer.Typer(add_completion=False)


@node_app.callback(invoke_without_command=True)
def node(
    ctx: typer.Context,
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
    secrets_key_file: Annotated[Path | None, typer.Option(
        envvar="EDGE_SECRETS_KEY_FILE",
        help="the fleet's secrets key (the control plane's DATA/secrets.key)",
    )] = None,
    previous_secrets_key_file: Annotated[Path | None, typer.Option(
        help="the key a rotation replaces, while it runs (may be absent: no key)",
    )] = None,
    as_json: JsonOption = False,
) -> None:
    """Run an edge node: from a node.toml, or following a control plane (--control).

    --json: events on stdout, one per line (ready, function_error); request logs stay on stderr.
    `edge node forget ID` removes a node that is gone for good from the control plane."""
    if ctx.invoked_subcommand is not None:
        return
    from edge.node.main import node_config_from_args, run_node

    out = Output(as_json)
    if config is None and control is None:
        out.fail(UsageError("give --config node.toml or --control URL"), EXIT_USAGE)
    with out:
        settings = node_config_from_args(
            config, control, region, node_id, listen, token, public_key, state_dir,
            secrets_key_file, previous_secrets_key_file,
        )
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_node(settings, out))


@app.command()
def up(
    state_dir: Annotated[Path, typer.Option(help="where the stack keeps its state")] = Path(
        ".edge-up"
    ),
    control_port: int = 7070,
    node_port: int = 8787,
    dns_port: int = 5353,
    as_json: JsonOption = False,
) -> None:
    """The whole system on loopback: control plane, three regions, geo-DNS, a deployed example.

    --json: events on stdout, one per line (ready with every address and the admin token,
    stopped)."""
    from edge.up import UpSettings, run_up

    with Output(as_json) as out:
        run_up(UpSettings(state_dir.resolve(), control_port, node_port, dns_port), out)


def _register_subsystems() -> None:
    from edge.control.command_groups import register_all
    from edge.traffic.main import dns

    register_all(app, node_app)
    app.add_typer(node_app, name="node")
    app.command()(dns)


_register_subsystems()


def main() -> None:
    run_app(app, sys.argv[1:])
