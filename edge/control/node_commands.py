"""`edge node forget ID`: the operator removes a node that is gone for good (scope admin).

A decommissioned node would otherwise stay listed as down in `edge status`, `GET /v1/status`,
the dashboard and the metrics forever. Only a node that stopped reporting can be forgotten; one
that comes back later joins again as if new.
"""

from __future__ import annotations

from typing import Annotated

import typer

from edge.cli_output import JsonOption, Output
from edge.control.client import DEFAULT_URL
from edge.control.commands import ControlUrl, Token, _client


def forget(
    node_id: Annotated[str, typer.Argument(metavar="ID", help="from `edge status`")],
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOption = False,
) -> None:
    """Remove node ID, which must have stopped reporting; --json: the node's last state and the
    revision that removed its endpoint."""
    with Output(as_json) as out, _client(control, token) as client:
        result = client.forget_node(node_id)
        gone = result["forgotten"]
        out.result(result, f"node {gone['id']} ({gone['region']}) forgotten at revision "
                           f"{result['revision']}; it was last seen {gone['last_seen_s_ago']:.0f}"
                           " s ago")  # fmt: skip


def register(node_app: typer.Typer) -> None:
    node_app.command("forget")(forget)
