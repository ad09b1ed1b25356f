"""The CLI commands against a real control plane, and the convergence wait on a fake clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import typer
from typer.testing import CliRunner

from edge.control.client import ControlClient, Convergence, convergence, wait_for_nodes
from edge.control.command_groups import control_cli
from tests.control.conftest import ControlServer, FakeClock, component, manifest

Start = Callable[..., ControlServer]


def project(tmp_path: Path) -> tuple[Path, Path]:
    d = tmp_path / "hello"
    d.mkdir()
    (d / "edge.toml").write_text('[function]\nname = "hello"\nlang = "c"\n')
    wasm = tmp_path / "hello.wasm"
    wasm.write_bytes(component("cli"))
    return d, wasm


control_app = control_cli()


def cli(server: ControlServer, *args: str, env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(
        control_app, list(args),
        env={"EDGE_CONTROL_URL": server.url, "EDGE_TOKEN": server.admin, **(env or {})},
    )
    return result


def report(server: ControlServer, node_id: str, revision: int, last_error: str = "") -> None:
    r = httpx.post(server.url + "/v1/node/report",
                   headers={"authorization": f"Bearer {server.node}"},
                   json={"node_id": node_id, "region": "eu", "revision": revision,
                         "healthy": True, "convergence_ms": 5, "last_error": last_error})
    assert r.status_code == 200


def test_deploy_waits_for_nodes_then_canary_promote_rollback(
    start_control: Start, tmp_path: Path
) -> None:
    server = start_control()
    proj, wasm = project(tmp_path)
    report(server, "n1", 0)
    # A node that applies revision 1 shortly after the deploy.
    timer = threading.Timer(0.5, report, (server, "n1", 1))
    timer.start()
    r = cli(server, "deploy", str(proj), "--component", str(wasm), "--route", "example.com/",
            "--json", "--timeout-s", "10")
    timer.join()
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["version"]["number"] == 1 and out["deploy"]["revision"] == 1
    assert out["convergence"]["converged"] and out["convergence"]["current"] == ["n1"]

    report(server, "n1", 99)  # from here on the node is always ahead
    r = cli(server, "deploy", str(proj), "--component", str(wasm))
    assert r.exit_code == 0, r.output
    assert "deployed v2" in r.stdout
    r = cli(server, "canary", "hello", "1", "--percent", "20", "--json")
    assert json.loads(r.stdout)["deployment"]["canary"] == 1
    r = cli(server, "promote", "hello")
    assert "promoted: stable v1" in r.stdout
    r = cli(server, "rollback", "hello")
    assert "rolled back: stable v2" in r.stdout
    r = cli(server, "rollback", "hello", "--to", "1", "--json")
    assert json.loads(r.stdout)["deployment"]["stable"] == 1
    r = cli(server, "versions", "hello", "--json")
    assert [v["number"] for v in json.loads(r.stdout)["versions"]] == [1, 2]
    r = cli(server, "versions", "hello")
    assert r.exit_code == 0 and "stable" in r.stdout
    r = cli(server, "status", "--json")
    assert json.loads(r.stdout)["revision"] == 6
    r = cli(server, "status")
    assert r.exit_code == 0 and "n1" in r.stdout and "example.com/" in r.stdout


def table_rows(text: str) -> dict[str, list[str]]:
    """A rich table's rows by first cell, without the last (the time): the cells of each line
    between the box's vertical bars."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) > 2 and cells[0] and cells[0] != "function":
            rows[cells[0]] = cells[1:-1]
    return rows


def test_function_list_shows_a_table_json_and_deleted_ones_on_request(
    start_control: Start,
) -> None:
    server = start_control()
    with ControlClient(server.url, server.admin) as admin:
        for name, tag in (("web", "1"), ("web", "2"), ("gone", "1"), ("draft", "1")):
            admin.upload_version(name, component(name + tag), manifest(name), "")
        admin.deploy("web", 1, ["example.com/"])
        admin.canary("web", 2, 15)
        admin.deploy("gone", 1, ["*/gone"])
        admin.delete_function("gone")
    with ControlClient(server.url, server.token("other")) as other:
        other.upload_version("theirs", component("t"), manifest("theirs"), "")
    reader = server.token("default", ("read",))

    wide = {"COLUMNS": "120"}  # rich's width: every cell on one line
    r = cli(server, "function", "list", "--token", reader, env=wide)
    assert r.exit_code == 0, r.output
    assert table_rows(r.stdout) == {"web": ["v1", "v2 at 15%", "2", "example.com/"],
                                    "draft": ["-", "-", "1", "-"]}
    r = cli(server, "function", "list", "--deleted", "--token", reader, env=wide)
    assert table_rows(r.stdout)["gone"] == ["deleted", "-", "1", "-"]

    r = cli(server, "function", "list", "--json", "--token", reader)
    assert r.exit_code == 0, r.output
    listed = json.loads(r.stdout)["functions"]
    assert [(f["name"], f["stable"], f["canary"], f["canary_percent"]) for f in listed] == [
        ("draft", None, None, 0), ("web", 1, 2, 15)]
    r = cli(server, "function", "list", "--deleted", "--json", "--token", reader)
    assert [(f["name"], f["deleted"]) for f in json.loads(r.stdout)["functions"]] == [
        ("draft", False), ("gone", True), ("web", False)]

    # Errors as every command has them: a wrong token says so, in words or in JSON.
    r = cli(server, "function", "list", "--token", "edge_wrong")
    assert (r.exit_code, r.stderr.strip()) == (1, "error: unknown token")
    assert r.stdout == ""
    r = cli(server, "function", "list", "--json", "--token", "edge_wrong")
    assert r.exit_code == 1 and json.loads(r.stdout) == {
        "error": {"type": "unauthorized", "message": "unknown token"}}
    r = cli(server, "function", "list", "--token", server.token("default", ("operate",)))
    assert (r.exit_code, r.stderr.strip()) == (1, "error: this token lacks the 'read' scope")
    r = CliRunner().invoke(control_app, ["function", "list"],
                           env={"EDGE_CONTROL_URL": server.url, "EDGE_TOKEN": ""})
    assert r.exit_code == 1 and "no token" in r.stderr
    fresh = server.token("empty")
    r = cli(server, "function", "list", "--token", fresh)
    assert r.stdout.strip() == "no functions (deleted ones: --deleted)"


def test_deploy_timeout_names_the_laggards(start_control: Start, tmp_path: Path) -> None:
    server = start_control()
    proj, wasm = project(tmp_path)
    report(server, "slow-node", 0)
    r = cli(server, "deploy", str(proj), "--component", str(wasm), "--timeout-s", "0.3")
    assert r.exit_code == 1
    assert "slow-node" in r.stderr and "revision 1" in r.stderr


def test_deploy_fails_at_once_when_every_laggard_refused_the_revision(
    start_control: Start, tmp_path: Path
) -> None:
    server = start_control()
    proj, wasm = project(tmp_path)
    report(server, "ok-node", 0)
    report(server, "bad-key", 0)
    bad = "refused revision 1: snapshot signature does not verify"
    timers = [threading.Timer(0.3, report, (server, "ok-node", 1)),
              threading.Timer(0.3, report, (server, "bad-key", 0, bad))]
    for t in timers:
        t.start()
    r = cli(server, "deploy", str(proj), "--component", str(wasm), "--route", "example.com/",
            "--json", "--timeout-s", "600")
    for t in timers:
        t.join()
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["error"]["type"] == "revision_refused"
    assert f"bad-key: {bad}" in doc["error"]["message"]
    conv = doc["convergence"]
    assert (conv["current"], conv["laggards"], conv["refused"]) == (["ok-node"], ["bad-key"],
                                                                     ["bad-key"])
    assert not conv["converged"] and conv["elapsed_s"] < 600  # did not wait out the timeout
    # The change itself is made: the next status has it, and the node's error.
    status = json.loads(cli(server, "status", "--json").stdout)
    assert status["revision"] == doc["revision"] == 1


def test_errors_are_one_line(start_control: Start, tmp_path: Path) -> None:
    server = start_control()
    r = cli(server, "promote", "nothere")
    assert r.exit_code == 1 and r.stderr.strip() == "error: no function 'nothere'"
    r = CliRunner().invoke(control_app, ["status", "--control", "http://127.0.0.1:1",
                                         "--token", "x"])
    assert r.exit_code == 1 and "control plane at http://127.0.0.1:1" in r.stderr
    r = CliRunner().invoke(control_app, ["status"], env={"EDGE_TOKEN": ""})
    assert r.exit_code == 1 and "no token" in r.stderr


def test_wait_for_nodes_on_a_fake_clock() -> None:
    clock = FakeClock(0)
    statuses = iter([
        {"nodes": [{"id": "a", "applied_revision": 4, "stale": False},
                   {"id": "b", "applied_revision": 5, "stale": False},
                   {"id": "gone", "applied_revision": 1, "stale": True}]},
        {"nodes": [{"id": "a", "applied_revision": 5, "stale": False},
                   {"id": "b", "applied_revision": 5, "stale": False}]},
    ])
    seen: list[Convergence] = []
    done = wait_for_nodes(lambda: next(statuses), 5, 10, on_progress=seen.append, now=clock,
                          sleep=clock.advance)
    assert done.converged and done.elapsed_s == 0.25
    assert seen[0].laggards == ("a",) and seen[0].stale == ("gone",)

    # A node behind and down by the control plane's check is not waited for either.
    dead = {"nodes": [{"id": "a", "applied_revision": 5, "stale": False, "check": "up"},
                      {"id": "b", "applied_revision": 4, "stale": False, "check": "down"}]}
    done = wait_for_nodes(lambda: dead, 5, 10, now=clock, sleep=clock.advance)
    assert done.converged and (done.current, done.laggards, done.down) == (("a",), (), ("b",))

    stuck = {"nodes": [{"id": "a", "applied_revision": 4, "stale": False}]}
    late = wait_for_nodes(lambda: stuck, 5, 1.0, now=clock, sleep=clock.advance)
    assert not late.converged and late.laggards == ("a",) and late.elapsed_s >= 1.0
    assert not late.stuck


def test_wait_for_nodes_stops_once_every_laggard_refused_the_revision() -> None:
    """A node that refused the revision (wrong key, tampered blob) keeps its last good state:
    waiting for it until the timeout only delays the failure."""
    clock = FakeClock(0)

    def node(id_: str, applied: int, error: str = "") -> dict[str, Any]:
        return {"id": id_, "applied_revision": applied, "stale": False, "last_error": error}

    bad_key = "refused revision 5: snapshot signature does not verify"
    statuses = iter([
        # b has not said anything yet; a refused an older revision, which says nothing of 5.
        {"nodes": [node("a", 3, "refused revision 4: tampered"), node("b", 4)]},
        {"nodes": [node("a", 4, bad_key), node("b", 4)]},  # b may still apply it
        {"nodes": [node("a", 4, bad_key), node("b", 5), node("c", 4, "refused revision 6: x")]},
    ])
    seen: list[Convergence] = []
    done = wait_for_nodes(lambda: next(statuses), 5, 60, on_progress=seen.append, now=clock,
                          sleep=clock.advance)
    assert [s.refused for s in seen] == [(), ("a",), ("a", "c")]
    assert [s.stuck for s in seen] == [False, False, True]
    assert not done.converged and done.laggards == ("a", "c") and done.current == ("b",)
    assert done.elapsed_s == 0.5  # two intervals, not the 60 s timeout

    # A version a node cannot load is applied (the node is current): not a refusal.
    loaded = {"nodes": [node("a", 5, "revision 5: cannot load default/x v2: no export")]}
    assert wait_for_nodes(lambda: loaded, 5, 60, now=clock, sleep=clock.advance).converged


def test_status_long_poll_answers_on_the_report_that_completes_a_revision(
    start_control: Start, tmp_path: Path
) -> None:
    server = start_control()
    proj, wasm = project(tmp_path)
    report(server, "n1", 0)
    report(server, "n2", 0)
    r = cli(server, "deploy", str(proj), "--component", str(wasm), "--route", "example.com/",
            "--timeout-s", "0")
    assert r.exit_code == 1  # nobody has applied it yet
    admin = server.client(server.admin)
    # Not there yet: the wait ends after wait_s and says who is behind.
    behind = admin.get("/v1/status", params={"revision": 1, "wait_s": 0.2}).json()
    assert {n["id"]: n["current"] for n in behind["nodes"]} == {"n1": False, "n2": False}
    # The answer comes with the report that completes revision 1, not before it.
    reports = [threading.Timer(0.2, report, (server, "n1", 1)),
               threading.Timer(0.4, report, (server, "n2", 1))]
    for t in reports:
        t.start()
    done = admin.get("/v1/status", params={"revision": 1, "wait_s": 30}).json()
    for t in reports:
        t.join()
    assert all(n["applied_revision"] == 1 for n in done["nodes"])
    bad = admin.get("/v1/status", params={"revision": "x"})
    assert bad.status_code == 400 and bad.json()["error"] == "bad_request"


def test_status_long_poll_answers_on_the_refusal_of_the_last_laggard(
    start_control: Start, tmp_path: Path
) -> None:
    """A node that refuses the revision will not apply it by waiting: its report wakes the
    long poll like an applied one, so `edge deploy` fails with revision_refused at once."""
    server = start_control()
    proj, wasm = project(tmp_path)
    for node_id in ("ok-node", "bad-key", "slow-node"):
        report(server, node_id, 0)
    r = cli(server, "deploy", str(proj), "--component", str(wasm), "--route", "example.com/",
            "--timeout-s", "0")
    assert r.exit_code == 1  # nobody has applied it yet
    bad = "refused revision 1: snapshot signature does not verify"
    reports = [threading.Timer(0.2, report, (server, "ok-node", 1)),
               threading.Timer(0.3, report, (server, "slow-node", 1)),
               threading.Timer(0.4, report, (server, "bad-key", 0, bad))]
    for t in reports:
        t.start()
    admin = server.client(server.admin)
    wait_s = 60.0
    started = time.monotonic()
    done = admin.get("/v1/status", params={"revision": 1, "wait_s": wait_s},
                     timeout=wait_s + 30).json()
    waited_s = time.monotonic() - started
    for t in reports:
        t.join()
    assert waited_s < wait_s, waited_s  # woken by the refusal, not by the end of the wait
    nodes = {n["id"]: (n["applied_revision"], n["last_error"]) for n in done["nodes"]}
    assert nodes == {"ok-node": (1, ""), "slow-node": (1, ""), "bad-key": (0, bad)}
    state = convergence(done, 1, waited_s)
    assert state.stuck and state.refused == ("bad-key",)


def test_python_m_edge_control_offers_every_control_plane_command_of_edge(
    start_control: Start,
) -> None:
    """`python -m edge.control` has what `edge` has for the control plane; `edge` adds only
    building, running and the DNS server."""
    from edge.cli import app as edge_app

    def names(app: typer.Typer) -> set[str]:
        commands = {c.name or getattr(c.callback, "__name__", "").replace("_", "-")
                    for c in app.registered_commands}
        return commands | {str(g.name) for g in app.registered_groups}

    assert names(edge_app) - names(control_app) == {"new", "build", "dev", "up", "dns"}
    assert names(control_app) <= names(edge_app)
    # The groups work from the module too, against a real control plane.
    server = start_control()
    env = {**os.environ, "EDGE_CONTROL_URL": server.url, "EDGE_TOKEN": server.admin}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge.control", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    r = run("function", "delete", "nothere")
    assert r.returncode == 1 and "no function 'nothere'" in r.stderr, r.stderr
    r = run("function", "list", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"functions": []}, r.stderr
    report(server, "gone-1", 0)
    r = run("node", "forget", "gone-1")  # still reporting: refused
    assert r.returncode == 1 and "gone-1" in r.stderr, r.stderr
    r = run("region", "set", "eu-west", "--lat", "53.35", "--lon", "-6.26", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["name"] == "eu-west"
    r = run("tenant", "list", "--json")
    assert r.returncode == 0 and "default" in {t["name"] for t in json.loads(r.stdout)["tenants"]}
