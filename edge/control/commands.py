"""CLI commands for the control plane: `edge control` (the server) and the client commands
`deploy`, `versions`, `rollback`, `canary`, `promote`, `status`.

`edge.control.command_groups` registers them, with the other command groups, on `edge`
and `python -m edge.control`.
Every client command takes --control/EDGE_CONTROL_URL, --token/EDGE_TOKEN and --json.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edge.cli_output import EXIT_USAGE, JsonOption, Output
from edge.config.function import parse_function_config
from edge.config.toml_fields import load_toml
from edge.control.client import DEFAULT_URL, ControlClient, Convergence
from edge.control.errors import Conflict, RemoteError
from edge.control.values import parse_assignments
from edge.errors import BadRequest, EdgeError, UsageError

ControlUrl = Annotated[
    str, typer.Option("--control", envvar="EDGE_CONTROL_URL", help="control plane URL")
]
Token = Annotated[str, typer.Option("--token", envvar="EDGE_TOKEN", help="API token")]

# Kept for commands written before edge.cli_output; new code uses Output.
JsonOut = JsonOption
console = Console(stderr=True)


def _fail(error: EdgeError) -> NoReturn:
    Output().fail(error)


def _print_json(value: Any) -> None:
    Output(True).result(value)


@contextmanager
def _client(url: str, token: str) -> Iterator[ControlClient]:
    """A client for the control plane; raises EdgeError (run it inside `with Output(...)`)."""
    if not token:
        raise BadRequest("no token: pass --token or set EDGE_TOKEN")
    with ControlClient(url, token) as client:
        yield client


def _change_line(result: dict[str, Any], what: str) -> str:
    d = result["deployment"]
    if not result["changed"]:
        return f"{d['function']}: nothing changed (revision {result['revision']})"
    canary = f", canary v{d['canary']} at {d['canary_percent']}%" if d["canary"] else ""
    return (f"{d['function']}: {what}: stable v{d['stable']}{canary} "
            f"(revision {result['revision']})")


class NotConverged(EdgeError):
    """Some live nodes did not apply the revision in time (the change itself is made)."""

    status = 504
    reason = "not_converged"


class RevisionRefused(NotConverged):
    """Every node still behind reported refusing the revision (wrong key, tampered snapshot or
    blob): they keep their last good state, and waiting longer cannot help."""

    reason = "revision_refused"


class VersionRejected(EdgeError):
    """Nodes applied the revision but cannot load the new version (the change itself is made:
    its requests get 503 there until a rollback)."""

    status = 502
    reason = "version_rejected"


def serve(
    data: Annotated[Path, typer.Option("--data", help="data directory (created if new)")],
    listen: Annotated[str, typer.Option(help="HOST:PORT")] = "127.0.0.1:7000",
    health_interval: Annotated[float, typer.Option(
        "--health-interval", min=0.01, help="seconds between checks of each node's /healthz"
    )] = 2.0,
    health_timeout: Annotated[float, typer.Option(
        "--health-timeout", min=0.01, help="seconds a check may take before it fails"
    )] = 1.0,
    health_rise: Annotated[int, typer.Option(
        "--health-rise", min=1, help="passes in a row that bring a down node up"
    )] = 2,
    health_fall: Annotated[int, typer.Option(
        "--health-fall", min=1, help="failures in a row that take an up node down"
    )] = 2,
    log_max_lines: Annotated[int, typer.Option(
        "--log-max-lines", min=1, help="function log lines kept per function (the newest)"
    )] = 100_000,
    log_max_age: Annotated[float, typer.Option(
        "--log-max-age", min=1, help="seconds a function log line is kept"
    )] = 24 * 3600.0,
    node_stale_after: Annotated[float, typer.Option(
        "--node-stale-after", min=0.1,
        help="seconds without a report after which a node is stale (and may be forgotten)",
    )] = 60.0,
    secrets_key: Annotated[Path | None, typer.Option(
        "--secrets-key", help="the fleet's secrets key file (default DATA/secrets.key, made "
        "at first start); nodes need a copy",
    )] = None,
    as_json: JsonOption = False,
) -> None:
    """Run the control plane. The first start creates tenant "default" and prints its tokens.

    It checks every node's /healthz itself (`edge status` shows the result) with the
    --health-* timing. Function log lines shipped by nodes are kept in the database, up to
    --log-max-lines per function and --log-max-age seconds. --json: events on stdout, one per
    line (bootstrapped with the tokens, ready)."""
    from edge.control.api import ControlSettings
    from edge.control.server import run_control

    settings = ControlSettings(
        health_interval_s=health_interval, health_timeout_s=health_timeout,
        health_rise=health_rise, health_fall=health_fall,
        log_max_lines_per_function=log_max_lines, log_max_age_s=log_max_age,
        node_stale_after_s=node_stale_after,
    )  # fmt: skip
    with Output(as_json) as out, suppress(KeyboardInterrupt):
        asyncio.run(run_control(data, listen, settings, out=out, secrets_key=secrets_key))


def _component(out: Output, project: Path, component: Path | None) -> tuple[bytes, Any]:
    """The component's bytes and, when built here, the BuildResult (for the JSON output)."""
    if component is not None:
        try:
            return component.read_bytes(), None
        except OSError as e:
            raise BadRequest(f"cannot read component: {e}") from None
    try:
        from edge.build.report import build_with_progress, summary
    except ImportError:
        raise BadRequest("building is not available here; pass --component FILE") from None
    built = build_with_progress(out, project)
    out.say(summary(built))
    return built.path.read_bytes(), built


def deploy(
    project: Annotated[Path, typer.Argument(help="function project (edge.toml)")] = Path("."),
    route: Annotated[
        list[str] | None, typer.Option("--route", help="HOST/PATH; repeat; default: keep")
    ] = None,
    component: Annotated[
        Path | None, typer.Option(help="a built component; skips the build")
    ] = None,
    message: Annotated[str, typer.Option("--message", "-m")] = "",
    canary_percent: Annotated[int | None, typer.Option(
        "--canary", min=1, max=100,
        help="start the new version as a canary for PERCENT of clients, not as stable",
    )] = None,
    sticky: Annotated[str | None, typer.Option(help="with --canary: ip or cookie:NAME")] = None,
    var: Annotated[list[str] | None, typer.Option(
        "--var", metavar="KEY=VALUE",
        help="set a config value (as `edge config set`) with the deploy; repeat",
    )] = None,
    timeout_s: Annotated[float, typer.Option("--timeout-s", help="wait for nodes")] = 60.0,
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOption = False,
) -> None:
    """Build PROJECT, upload it as a new version, make it stable (or, with --canary PERCENT,
    the canary for that share of clients), and wait for every node.

    --var values change with the deployment: nodes switch to both at once.

    Shows the build's step, then every node's progress towards the new revision; ends with one
    line: version, revision, nodes and seconds. --json: version, revision and every node."""
    with Output(as_json) as out:
        if canary_percent is None and sticky is not None:
            out.fail(UsageError("--sticky goes with --canary"), EXIT_USAGE)
        if canary_percent is not None and var:
            out.fail(UsageError("--var sets values every version reads, the stable one too: "
                                "with --canary, use `edge config set` on its own"), EXIT_USAGE)
        if canary_percent is not None and route:
            out.fail(UsageError("--route changes routes with a stable deploy, not --canary"),
                     EXIT_USAGE)
        values = parse_assignments(var or [])
        manifest = load_toml(project / "edge.toml")
        config = parse_function_config(manifest, str(project / "edge.toml"))
        data, built = _component(out, project, component)
        with _client(control, token) as client:
            if canary_percent is not None and not _deployed(client, config.name):
                raise Conflict(f"{config.name} has no stable version to canary against yet: "
                               "deploy it without --canary first")
            version = client.upload_version(config.name, data, manifest, message)
            out.say(f"{config.name}: uploaded v{version['number']} ({len(data)} bytes, "
                    f"sha256 {version['sha256'][:12]})")
            if canary_percent is None:
                result = client.deploy(config.name, version["number"], route or None,
                                       dict(values))
            else:
                result = client.canary(config.name, version["number"], canary_percent, sticky)
            revision = int(result["revision"])
            state = _wait_with_progress(out, client, revision, timeout_s)
            nodes = _nodes_json(client.status(), revision)
        doc = {"function": config.name, "revision": revision, "version": version,
               "deploy": result, "convergence": _conv_json(state), "nodes": nodes,
               "build": None if built is None else built.to_json()}
        for node_id in state.stale:
            out.note(f"warning: node {node_id} has stopped reporting; not waited for")
        for node_id in state.down:
            out.note(f"warning: node {node_id} is down by the control plane's health check; "
                     "not waited for")
        if state.stuck:
            out.fail(RevisionRefused(
                f"these nodes refused revision {revision} and keep serving their last good "
                f"state: {_each_error(nodes, state.laggards)}"), done=doc)
        if not state.converged:
            out.fail(NotConverged(
                f"after {timeout_s:g}s these nodes have not applied revision {revision}: "
                f"{', '.join(state.laggards)}{_errors_said(nodes, state.laggards)}"), done=doc)
        cannot = f"cannot load {result['deployment']['function']} v{version['number']}:"
        rejected = tuple(n["id"] for n in nodes if n["current"] and cannot in n["last_error"])
        if rejected:
            out.fail(VersionRejected(
                f"v{version['number']} is deployed (revision {revision}) but these nodes cannot"
                f" run it: {', '.join(rejected)}{_errors_said(nodes, rejected)}; roll back with"
                f" `edge rollback {config.name}`"), done=doc)
        what = "deployed" if canary_percent is None else "canary"
        out.result(doc, _change_line(result, f"{what} v{version['number']}")
                   + f"; {_nodes_line(state)}")


def _deployed(client: ControlClient, name: str) -> bool:
    try:
        return bool(client.versions(name)["deployment"])
    except RemoteError as e:
        if e.status != 404:  # 404: no such function (yet)
            raise
        return False


def _errors_said(nodes: list[dict[str, Any]], ids: tuple[str, ...]) -> str:
    """What the first of `ids` that reported an error said, for a failure's message."""
    said = next((n for n in nodes if n["id"] in ids and n["last_error"]), None)
    return "" if said is None else f" ({said['id']}: {said['last_error']})"


def _each_error(nodes: list[dict[str, Any]], ids: tuple[str, ...]) -> str:
    return "; ".join(f"{n['id']}: {n['last_error']}" for n in nodes if n["id"] in ids)


def _nodes_line(c: Convergence) -> str:
    live = len(c.current) + len(c.laggards)
    if live == 0:
        return "no nodes reporting"
    return f"{len(c.current)}/{live} nodes in {c.elapsed_s:.2f} s"


def _nodes_json(status: dict[str, Any], revision: int) -> list[dict[str, Any]]:
    return [{"id": n["id"], "region": n["region"], "applied_revision": n["applied_revision"],
             "current": n["applied_revision"] >= revision, "stale": n["stale"],
             "healthy": n["healthy"], "last_error": n.get("last_error", "")}
            for n in status.get("nodes", [])]


def _conv_json(c: Convergence) -> dict[str, Any]:
    return {"revision": c.revision, "converged": c.converged, "current": list(c.current),
            "laggards": list(c.laggards), "stale": list(c.stale), "down": list(c.down),
            "refused": list(c.refused), "elapsed_s": round(c.elapsed_s, 3)}


def _wait_with_progress(
    out: Output, client: ControlClient, revision: int, timeout_s: float
) -> Convergence:
    with out.progress(f"revision {revision}") as bar:

        def show(c: Convergence) -> None:
            live = len(c.current) + len(c.laggards)
            waiting = ("  waiting: " + ", ".join(c.laggards[:5])) if c.laggards else ""
            bar.update(len(c.current) if live else 1, live or 1,
                       f"{len(c.current)}/{live} nodes{waiting}")

        return client.wait_for(revision, timeout_s, on_progress=show)


def versions(
    name: str, control: ControlUrl = DEFAULT_URL, token: Token = "", as_json: JsonOption = False
) -> None:
    """List a function's versions and which are stable and canary."""
    with Output(as_json) as out, _client(control, token) as client:
        result = client.versions(name)
    d = result["deployment"] or {}
    table = Table("version", "", "sha256", "size", "author", "message")
    for v in reversed(result["versions"]):
        mark = ("stable" if v["number"] == d.get("stable")
                else f"canary {d.get('canary_percent')}%" if v["number"] == d.get("canary")
                else "")
        table.add_row(str(v["number"]), mark, v["sha256"][:12], str(v["size"]), v["author"],
                      v["message"])
    out.result(result, lambda: out.show(table))


def rollback(
    name: str,
    to: Annotated[int | None, typer.Option("--to", help="version (default: previous stable)")]
    = None,
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOption = False,
) -> None:
    """Go back to the previous stable version, or to --to N. Drops any canary; during a
    canary, without --to, only the canary goes and the stable version stays."""
    with Output(as_json) as out, _client(control, token) as client:
        result = client.rollback(name, to)
    out.result(result, _change_line(result, "rolled back"))


def canary(
    name: str,
    version: int,
    percent: Annotated[int, typer.Option("--percent", min=0, max=100)],
    sticky: Annotated[str | None, typer.Option(help="ip or cookie:NAME")] = None,
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOption = False,
) -> None:
    """Send PERCENT of clients (sticky per client) to VERSION."""
    with Output(as_json) as out, _client(control, token) as client:
        result = client.canary(name, version, percent, sticky)
    out.result(result, _change_line(result, "canary"))


def promote(
    name: str, control: ControlUrl = DEFAULT_URL, token: Token = "", as_json: JsonOption = False
) -> None:
    """Make the canary the stable version for everyone."""
    with Output(as_json) as out, _client(control, token) as client:
        result = client.promote(name)
    out.result(result, _change_line(result, "promoted"))


def status(
    control: ControlUrl = DEFAULT_URL, token: Token = "", as_json: JsonOption = False
) -> None:
    """The current revision and, per region and node, what is applied, when last seen, and
    whether the control plane's own /healthz check finds it up."""
    with Output(as_json) as out, _client(control, token) as client:
        result = client.status()
    table = Table("node", "region", "applied", "healthy", "check", "last seen", "convergence")
    for n in result["nodes"]:
        seen = f"{n['last_seen_s_ago']:.0f}s ago" + (" (stale)" if n["stale"] else "")
        conv = "" if n["convergence_ms"] is None else f"{n['convergence_ms']:.0f} ms"
        check = n.get("check", "unknown")
        table.add_row(n["id"], n["region"], str(n["applied_revision"]),
                      "yes" if n["healthy"] else "NO", "DOWN" if check == "down" else check,
                      seen, conv)
    lines = [f"{f['function']}: stable v{f['stable']}"
             + (f", canary v{f['canary']} {f['canary_percent']}%" if f["canary"] else "")
             + f" routes {' '.join(f['routes']) or '-'}" for f in result.get("functions", [])]

    # A refused snapshot or a version a node cannot load: the table has no room for the why.
    errors = [f"{n['id']}: {n['last_error']}" for n in result["nodes"] if n.get("last_error")]

    def human() -> None:
        out.show(f"revision {result['revision']}")
        out.show(table)
        for line in lines:
            out.show(line)
        for line in errors:
            out.show(Text(f"error on node {line}"))

    out.result(result, human)


def register(app: typer.Typer) -> None:
    """Adds `control`, `deploy`, `versions`, `rollback`, `canary`, `promote`, `status`."""
    app.command("control")(serve)
    for command in (deploy, versions, rollback, canary, promote, status):
        app.command()(command)
