"""`edge logs NAME`: a function's log lines from every node, as the control plane collected them.

Text by default (time, level, region/node, function@version, request id, message), or with
--json one JSON object per line (NDJSON), the API's fields unchanged: scripts can read a
--follow stream line by line.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer

from edge.control.client import DEFAULT_URL, ControlClient
from edge.control.commands import ControlUrl, JsonOut, Token, _client
from edge.control.errors import ControlUnreachable
from edge.control.regions import parse_duration_s
from edge.errors import BadRequest

RECONNECT_S = 1.0


def format_line(line: dict[str, Any]) -> str:
    t = float(line["time"])
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
    version = f"@v{line['version']}" if line.get("version") else ""
    source = "" if line.get("source") == "log" else f" ({line.get('source')})"
    request = f" [{line['request_id']}]" if line.get("request_id") else ""
    return (f"{stamp} {str(line['level']).upper():<5} {line['region']}/{line['node']} "
            f"{line['function']}{version}{source}{request} {line['message']}")  # fmt: skip


def logs(
    name: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")]
    = False,
    region: Annotated[str | None, typer.Option(help="only lines from this region")] = None,
    since: Annotated[str | None, typer.Option(help="only lines newer than this: 30s, 10m, 1h")]
    = None,
    limit: Annotated[int, typer.Option(help="at most the newest N lines of the backlog")] = 1000,
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOut = False,
) -> None:
    """Log lines of function NAME from every node (its own lines and the platform's errors).

    --follow keeps going across a restart of the control plane: it reconnects and goes on
    after the last line it printed."""
    if since is not None:
        try:
            parse_duration_s(since)
        except ValueError as e:
            raise BadRequest(f"--since: {e}") from None  # JSON too, with --json (run_app)

    def show(line: dict[str, Any]) -> None:
        print(json.dumps(line, ensure_ascii=False) if as_json else format_line(line), flush=True)

    with _client(control, token) as client:
        if not follow:
            for line in client.logs(name, since=since, region=region, limit=limit)["lines"]:
                show(line)
            return
        with contextlib.suppress(KeyboardInterrupt):
            follow_lines(client, name, since, region, show)


def follow_lines(
    client: ControlClient, name: str, since: str | None, region: str | None,
    show: Callable[[dict[str, Any]], None], sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Streams until interrupted. A stream that breaks after it was open (the control plane
    restarted) is opened again after the last line shown; one that cannot be opened at all, or
    an error answer (a revoked token, a deleted function), ends the command."""
    after, opened = 0, False
    while True:
        try:
            for line in client.follow_logs(name, since=None if after else since,
                                           region=region, after=after):
                opened = True
                after = max(after, int(line.get("seq", 0)))
                show(line)
            opened = True  # the server ended the stream (shutting down): open it again
        except ControlUnreachable as e:
            if not opened:
                raise
            print(f"edge logs: {e.message}; reconnecting", file=sys.stderr, flush=True)
        sleep(RECONNECT_S)


def register(app: typer.Typer) -> None:
    app.command()(logs)
