"""`edge tenant create|list` and `edge token create|list|revoke`: the operator's commands, for a
token with the "admin" scope (the one printed at the control plane's first start has it).

`edge token create` prints the new secret once, on stdout alone (so `$(edge token create ...)`
captures just the token); the control plane keeps only its sha256.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from edge.cli_output import EXIT_USAGE, JsonOption, Output, utc_time
from edge.control.client import DEFAULT_URL
from edge.control.commands import ControlUrl, Token, _client
from edge.control.records import TOKEN_SCOPES
from edge.control.regions import parse_duration_s
from edge.errors import UsageError

tenant_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Tenants (admin).")
token_app = typer.Typer(no_args_is_help=True, add_completion=False, help="API tokens (admin).")


@tenant_app.command("create")
def create_tenant(
    name: str, control: ControlUrl = DEFAULT_URL, token: Token = "", as_json: JsonOption = False
) -> None:
    """Create tenant NAME (lowercase letters, digits and -)."""
    with Output(as_json) as out, _client(control, token) as client:
        result = client.create_tenant(name)
        out.note(f"tenant {result['name']} created; next: edge token create --tenant "
                 f"{result['name']} --scope deploy")
        out.result(result)


@tenant_app.command("list")
def list_tenants(
    control: ControlUrl = DEFAULT_URL, token: Token = "", as_json: JsonOption = False
) -> None:
    """Every tenant, its functions (deployed, and with versions: deleted ones keep theirs)
    and unrevoked tokens."""
    with Output(as_json) as out, _client(control, token) as client:
        result = client.tenants()
        table = Table("tenant", "created", "deployed", "with versions", "tokens")
        for t in result["tenants"]:
            table.add_row(t["name"], utc_time(t["created_unix"]), str(t["functions"]),
                          str(t["functions_with_versions"]), str(t["active_tokens"]))
        out.result(result, lambda: out.show(table))


@token_app.command("create")
def create_token(
    tenant: Annotated[str | None, typer.Option(help="the tenant the token acts for")] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help=f"{'|'.join(TOKEN_SCOPES)}; repeat or comma-separate"),
    ] = None,
    name: Annotated[str, typer.Option(help="a label shown in `edge token list`")] = "",
    node: Annotated[bool, typer.Option("--node", help="a node token (no tenant, no scope)")]
    = False,
    expires_in: Annotated[str | None, typer.Option(
        "--expires-in", help="e.g. 12h or 90d: then it gets 401 'token expired' (default: never)"
    )] = None,
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOption = False,
) -> None:
    """Create a token and print its secret, once (only its hash is kept)."""
    scopes = [x.strip() for s in scope or [] for x in s.split(",") if x.strip()]  # a,b works
    with Output(as_json) as out:
        if not node and (tenant is None or not scopes):
            out.fail(UsageError("give --tenant and at least one --scope (or --node)"), EXIT_USAGE)
        try:
            expires_in_s = None if expires_in is None else parse_duration_s(expires_in)
        except ValueError as e:
            out.fail(UsageError(f"--expires-in: {e}"), EXIT_USAGE)
        with _client(control, token) as client:
            result = client.create_token(tenant, scopes, name, node=node,
                                         expires_in_s=expires_in_s)
        who = "node token" if node else f"tenant {result['tenant']}, {','.join(result['scopes'])}"
        expires = result["expires_unix"]
        until = "" if expires is None else f", expires {utc_time(expires)}"
        out.note(f"token {result['id']} ({who}, name {result['name']!r}{until}); shown only now:")
        out.result(result, result["token"])  # stdout is the secret alone


@token_app.command("list")
def list_tokens(
    tenant: Annotated[str | None, typer.Option(help="only this tenant's")] = None,
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOption = False,
) -> None:
    """Every token (never a secret), revoked ones included."""
    with Output(as_json) as out, _client(control, token) as client:
        result = client.tokens(tenant)
        table = Table("id", "kind", "tenant", "scopes", "name", "created", "revoked", "expires")
        for t in result["tokens"]:
            table.add_row(*token_row(t))
        out.result(result, lambda: out.show(table))


def token_row(t: dict[str, Any]) -> tuple[str, ...]:
    return (
        str(t["id"]), t["kind"], t["tenant"] or "-", ",".join(t["scopes"]) or "-", t["name"],
        utc_time(t["created_unix"]), utc_time(t["revoked_unix"]), utc_time(t.get("expires_unix")),
    )  # fmt: skip


@token_app.command("revoke")
def revoke_token(
    token_id: Annotated[int, typer.Argument(metavar="ID", help="from `edge token list`")],
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOption = False,
) -> None:
    """Revoke token ID: its next request gets 401."""
    with Output(as_json) as out, _client(control, token) as client:
        result = client.revoke_token(token_id)
        out.note(f"token {result['id']} ({result['name']}) revoked at "
                 f"{utc_time(result['revoked_unix'])}")
        out.result(result)


def register(app: typer.Typer) -> None:
    app.add_typer(tenant_app, name="tenant")
    app.add_typer(token_app, name="token")
