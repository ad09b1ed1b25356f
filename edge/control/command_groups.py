"""Every control-plane command, registered on a typer app: `edge` and `python -m edge.control`
offer the same ones (`control`, `deploy`, `status`, `rotate-secrets-key`, ... and the
function, node, region, logs, tenant, token and config groups), from this one list."""

from __future__ import annotations

import typer

from edge.control import (
    admin_commands,
    commands,
    config_commands,
    function_commands,
    log_commands,
    node_commands,
    region_commands,
    secrets_commands,
)


def register_all(app: typer.Typer, node_app: typer.Typer) -> None:
    """`node_app`: the `node` group, which `edge` shares with running a node; the caller adds
    it to `app`."""
    commands.register(app)
    node_commands.register(node_app)
    region_commands.register(app)
    log_commands.register(app)
    admin_commands.register(app)
    function_commands.register(app)
    config_commands.register(app)
    secrets_commands.register(app)


def control_cli() -> typer.Typer:
    """`python -m edge.control`: the control plane and its client commands, without the node
    and build commands of `edge`."""
    app = typer.Typer(no_args_is_help=True, add_completion=False,
                      help="The edge control plane and its client commands.")
    node_app = typer.Typer(no_args_is_help=True, add_completion=False,
                           help="Edge nodes as the control plane knows them.")
    register_all(app, node_app)
    app.add_typer(node_app, name="node")
    return app
