"""Every `edge` command with --json, as a script runs it: a real process against real servers,
stdout parsed with json.loads, progress kept off stdout."""

from __future__ import annotations

import json
import os
import pty
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import httpx
import pytest

from edge.control.signing import Signer

from .cluster import FUNCTION, Control, follower, start_control, variant
from .conftest import EXAMPLES, REPO, NodeFactory, free_port

EDGE = [sys.executable, "-m", "edge"]


def edge(*args: str, control: Control | None = None, token: str | None = None,
         ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if control is not None:
        env["EDGE_CONTROL_URL"] = control.url
        env["EDGE_TOKEN"] = token if token is not None else control.tokens["admin"]
    r = subprocess.run([*EDGE, *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=180)
    if ok:
        assert r.returncode == 0, (r.stdout, r.stderr)
    return r


def edge_json(*args: str, control: Control | None = None) -> Any:
    """Runs a command with --json and returns its one JSON document (stdout has nothing else)."""
    return json.loads(edge(*args, "--json", control=control).stdout)


def hello_project(tmp_path: Path) -> Path:
    project = tmp_path / "hello"
    shutil.copytree(EXAMPLES / "c" / "hello", project, ignore=shutil.ignore_patterns("build"))
    return project


@pytest.fixture
def project(control: Control, start_node: NodeFactory, tmp_path: Path) -> Path:
    """The C hello to deploy, and one node in eu-west following `control` to deploy it to."""
    follower(start_node, control, "eu-1", "eu-west", tmp_path / "eu-1")
    return hello_project(tmp_path)


def test_control_commands_answer_json(control: Control, project: Path, tmp_path: Path) -> None:
    d = edge_json("deploy", str(project), "--route", "*/", control=control)
    assert d["function"] == FUNCTION and d["version"]["number"] == 1
    assert d["revision"] == d["deploy"]["revision"] == d["convergence"]["revision"]
    assert d["convergence"]["converged"] and d["convergence"]["current"] == ["eu-1"]
    assert [(n["id"], n["region"], n["current"]) for n in d["nodes"]] == [
        ("eu-1", "eu-west", True)
    ]
    assert d["nodes"][0]["applied_revision"] >= d["revision"]
    assert d["build"]["function"] == FUNCTION and d["build"]["size_bytes"] > 0

    data, _ = variant(tmp_path, "Hello v2")
    (tmp_path / "v2.wasm").write_bytes(data)
    d2 = edge_json("deploy", str(project), "--component", str(tmp_path / "v2.wasm"), "-m", "two",
                   control=control)
    assert d2["version"]["number"] == 2 and d2["revision"] > d["revision"]
    assert d2["build"] is None  # --component: nothing built

    v = edge_json("versions", FUNCTION, control=control)
    assert [(x["number"], x["message"]) for x in v["versions"]] == [(1, ""), (2, "two")]
    assert v["deployment"]["stable"] == 2

    c = edge_json("canary", FUNCTION, "1", "--percent", "10", control=control)
    assert (c["deployment"]["canary"], c["deployment"]["canary_percent"]) == (1, 10)
    p = edge_json("promote", FUNCTION, control=control)
    assert p["deployment"]["stable"] == 1 and p["deployment"]["canary"] is None
    r = edge_json("rollback", FUNCTION, control=control)
    assert r["deployment"]["stable"] == 2 and r["changed"]

    s = edge_json("status", control=control)
    assert s["revision"] == r["revision"]
    assert [n["id"] for n in s["nodes"]] == ["eu-1"]
    assert s["functions"][0]["function"] == f"default/{FUNCTION}"  # tenant/name

    set_ = edge_json("region", "set", "eu-west", "--lat", "53.35", "--lon", "-6.26",
                     "--weight", "60", control=control)
    assert (set_["name"], set_["weight"], set_["changed"]) == ("eu-west", 60, True)
    regions = edge_json("regions", control=control)["regions"]
    eu = next(x for x in regions if x["name"] == "eu-west")
    assert (eu["state"], eu["share"], eu["weight"], eu["nodes"]) == ("active", 1.0, 60, 1)

    drained = edge_json("region", "drain", "eu-west", "--over", "1s", "--wait", control=control)
    assert (drained["name"], drained["state"], drained["share"]) == ("eu-west", "drained", 0.0)
    assert drained["waited_s"] > 0 and drained["drain"]["over_s"] == 1.0
    back = edge_json("region", "undrain", "eu-west", control=control)
    assert (back["state"], back["share"], back["changed"]) == ("active", 1.0, True)


def test_a_version_nodes_cannot_run_fails_the_deploy_and_status_says_why(
    control: Control, project: Path, tmp_path: Path
) -> None:
    """Bytes that are no component are refused at upload; a component the nodes cannot load
    (it exports nothing) is deployed, but `edge deploy` fails and `edge status` says why, until a
    rollback clears it."""
    first = edge_json("deploy", str(project), "--route", "*/", control=control)
    junk = tmp_path / "junk.wasm"
    junk.write_bytes(bytes(range(256)) * 4)
    r = edge("deploy", str(project), "--component", str(junk), "--json", control=control,
             ok=False)
    assert r.returncode == 1 and json.loads(r.stdout)["error"]["type"] == "not_a_component"

    empty = tmp_path / "empty.wasm"
    empty.write_bytes(b"\x00asm\x0d\x00\x01\x00")  # framed as a component, exports nothing
    r = edge("deploy", str(project), "--component", str(empty), "--json", control=control,
             ok=False)
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["error"]["type"] == "version_rejected", doc
    assert "eu-1" in doc["error"]["message"] and f"edge rollback {FUNCTION}" in doc["error"][
        "message"]
    (node,) = doc["nodes"]
    assert node["current"] and f"cannot load default/{FUNCTION} v2" in node["last_error"]
    shown = edge("status", control=control).stdout
    assert "error on node eu-1: revision" in shown and "does not export" in " ".join(
        shown.split())

    back = edge_json("rollback", FUNCTION, control=control)
    assert back["deployment"]["stable"] == first["version"]["number"]
    deadline = time.monotonic() + 15
    while edge_json("status", control=control)["nodes"][0]["last_error"]:
        assert time.monotonic() < deadline, "the node still reports the error after a rollback"
        time.sleep(0.2)
    assert "error on node" not in edge("status", control=control).stdout


def test_deploy_does_not_wait_for_a_node_the_health_check_finds_down(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    """A node that died just before a deploy is stale only after a minute; `edge deploy` waited
    for it all that time and then failed with not_converged (its default timeout is a minute)."""
    control = start_control(tmp_path / "cp", free_port(), tmp_path / "cp.log",
                            ("--health-interval", "0.2", "--health-timeout", "0.5"))
    try:
        follower(start_node, control, "alive", "eu-west", tmp_path / "alive")
        dead = follower(start_node, control, "dead", "us-east", tmp_path / "dead")
        dead.stop()
        deadline = time.monotonic() + 20
        while next(n for n in edge_json("status", control=control)["nodes"]
                   if n["id"] == "dead")["check"] != "down":
            assert time.monotonic() < deadline, "the control plane never saw the node down"
            time.sleep(0.2)
        r = edge("deploy", str(hello_project(tmp_path)), "--route", "*/", "--timeout-s", "20",
                 "--json", control=control)
        d = json.loads(r.stdout)
        assert d["convergence"]["converged"] and d["convergence"]["current"] == ["alive"]
        assert d["convergence"]["down"] == ["dead"] and d["convergence"]["laggards"] == []
        assert "node dead is down by the control plane's health check" in r.stderr
    finally:
        control.proc.stop()


def test_deploy_fails_without_waiting_out_its_timeout_when_a_node_refuses_the_revision(
    control: Control, project: Path, start_node: NodeFactory, tmp_path: Path
) -> None:
    """A node configured with another control plane's key refuses every snapshot and keeps its
    last good state: `edge deploy` used to wait its whole timeout for it."""
    follower(start_node, control, "wrong-key", "us-east", tmp_path / "wrong-key",
             public_key=Signer.generate().public_key.hex(), ready=False)
    deadline = time.monotonic() + 30
    while "wrong-key" not in [n["id"] for n in edge_json("status", control=control)["nodes"]]:
        assert time.monotonic() < deadline, "the node never reported"
        time.sleep(0.2)
    r = edge("deploy", str(project), "--route", "*/", "--timeout-s", "600", "--json",
             control=control, ok=False)
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["error"]["type"] == "revision_refused", doc
    assert f"wrong-key: refused revision {doc['revision']}:" in doc["error"]["message"]
    conv = doc["convergence"]
    assert (conv["current"], conv["laggards"], conv["refused"]) == (
        ["eu-1"], ["wrong-key"], ["wrong-key"])
    assert conv["elapsed_s"] < 600


def test_deploy_canary_uploads_a_version_as_a_canary(
    control: Control, project: Path, tmp_path: Path
) -> None:
    """README's `edge canary NAME 2 --percent 10` needs a version 2 that is not stable yet, and
    `edge deploy` made every new version stable at once: `--canary PERCENT` uploads it as the
    canary instead (Cloudflare's `wrangler versions upload` + gradual deployment in one step)."""
    r = edge("deploy", str(project), "--canary", "10", "--json", control=control, ok=False)
    e = json.loads(r.stdout)["error"]
    assert r.returncode == 1 and e["type"] == "conflict" and "without --canary" in e["message"]
    first = edge_json("deploy", str(project), "--route", "*/", control=control)
    r = edge("deploy", str(project), "--canary", "10", "--route", "*/x", control=control,
             ok=False)
    assert r.returncode == 2 and "--route" in r.stderr
    assert len(edge_json("versions", FUNCTION, control=control)["versions"]) == 1

    data, _ = variant(tmp_path, "Hello canary")
    (tmp_path / "v2.wasm").write_bytes(data)
    d = edge_json("deploy", str(project), "--component", str(tmp_path / "v2.wasm"),
                  "--canary", "10", "--sticky", "cookie:uid", control=control)
    dep = d["deploy"]["deployment"]
    assert (dep["stable"], dep["canary"], dep["canary_percent"], dep["sticky"]) == (
        first["version"]["number"], d["version"]["number"], 10, "cookie:uid")
    assert d["convergence"]["converged"]
    node_url = next(n for n in edge_json("regions", control=control)["regions"]
                    if n["name"] == "eu-west")["endpoints"][0]["url"]
    answers = [httpx.get(node_url + "/", cookies={"uid": f"user-{i}"}).text for i in range(200)]
    canaried = answers.count("Hello canary\n")
    assert 0 < canaried < 60 and answers.count("Hello from C!\n") == 200 - canaried
    assert edge_json("promote", FUNCTION, control=control)["deployment"]["stable"] == 2


def test_function_delete_stops_nodes_routing_to_it_and_a_redeploy_brings_it_back(
    control: Control, project: Path
) -> None:
    first = edge_json("deploy", str(project), "--route", "*/", control=control)
    node_url = next(n for n in edge_json("regions", control=control)["regions"]
                    if n["name"] == "eu-west")["endpoints"][0]["url"]
    assert httpx.get(node_url + "/").text == "Hello from C!\n"

    read = edge_json("token", "create", "--tenant", "default", "--scope", "read", control=control)
    r = edge("function", "delete", FUNCTION, "--json", control=control, token=read["token"],
             ok=False)
    assert r.returncode == 1 and json.loads(r.stdout)["error"]["type"] == "forbidden"
    r = edge("function", "delete", "nothere", "--json", control=control, ok=False)
    e = json.loads(r.stdout)["error"]
    assert r.returncode == 1 and (e["type"], e["message"]) == ("not_found",
                                                               "no function 'nothere'")

    d = edge_json("function", "delete", FUNCTION, control=control)
    assert d["changed"] and d["revision"] > first["revision"]
    assert (d["deleted"]["stable"], d["deleted"]["routes"]) == (1, ["*/"])
    with control.client() as client:
        assert client.wait_for(d["revision"], 30).converged
    r = httpx.get(node_url + "/")
    assert (r.status_code, r.json()["error"]) == (404, "no_route"), r.text
    assert edge_json("status", control=control)["functions"] == []
    assert FUNCTION not in edge("status", control=control).stdout
    assert edge_json("function", "list", control=control)["functions"] == []
    [gone] = edge_json("function", "list", "--deleted", control=control)["functions"]
    assert (gone["name"], gone["deleted"], gone["stable"], gone["version_count"]) == (
        FUNCTION, True, None, 1)
    assert [v["number"] for v in edge_json("versions", FUNCTION, control=control)[
        "versions"]] == [1]
    again = edge("function", "delete", FUNCTION, control=control).stdout
    assert "not deployed, nothing to delete" in again

    back = edge_json("deploy", str(project), "--route", "*/", control=control)
    assert back["version"]["number"] == 2 and back["convergence"]["converged"]
    assert httpx.get(node_url + "/").text == "Hello from C!\n"
    assert [f["stable"] for f in edge_json("status", control=control)["functions"]] == [2]
    listed = edge_json("function", "list", control=control)["functions"]
    assert [(f["name"], f["stable"], f["deleted"]) for f in listed] == [(FUNCTION, 2, False)]
    said = edge("function", "delete", FUNCTION, control=control).stdout
    assert f"{FUNCTION}: deleted at revision" in said and "(was stable v2, routes */)" in said


def test_errors_are_json_objects_with_a_failing_exit_code(control: Control) -> None:
    def error(*args: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
        r = edge(*args, "--json", control=control, token=token, ok=False)
        doc = json.loads(r.stdout)
        assert set(doc) == {"error"} and set(doc["error"]) >= {"type", "message"}
        return r.returncode, doc["error"]

    code, e = error("promote", "nothere")
    assert code == 1 and e == {"type": "not_found", "message": "no function 'nothere'"}
    code, e = error("status", token="wrong")
    assert code == 1 and e["type"] == "unauthorized"
    code, e = error("status", token="")
    assert code == 1 and e["type"] == "bad_request" and "no token" in e["message"]
    code, e = error("region", "drain", "eu-west", "--over", "soon")
    assert code == 1 and e["type"] == "bad_request" and "not a duration" in e["message"]
    code, e = error("region", "drain", "nowhere")
    assert code == 1 and e["type"] == "not_found"
    code, e = error("canary", FUNCTION, "1", "--percent", "200")  # refused by the option parser
    assert code == 2 and e["type"] == "usage_error"
    code, e = error("dev", "--compiler", "llvm")  # checked before anything is built
    assert code == 2 and e == {
        "type": "usage_error", "message": "--compiler must be one of cranelift, winch, got 'llvm'"
    }
    r = edge("status", "--json", "--control", "http://127.0.0.1:1", "--token", "t", ok=False)
    assert r.returncode == 1 and json.loads(r.stdout)["error"]["type"] == "control_unreachable"


def test_new_and_build_json(tmp_path: Path) -> None:
    made = edge_json("new", "json-fn", "--lang", "c", "--dir", str(tmp_path / "fn"))
    assert made["function"] == "json-fn" and made["lang"] == "c"
    assert {Path(f).name for f in made["files"]} >= {"edge.toml", "main.c"}
    assert all(Path(f).is_file() for f in made["files"])

    first = edge_json("build", str(tmp_path / "fn"))
    again = edge_json("build", str(tmp_path / "fn"))
    assert first["function"] == again["function"] == "json-fn"
    assert again["cache_hit"] and again["path"] == first["path"]
    assert Path(again["path"]).stat().st_size == again["size_bytes"] > 0

    (tmp_path / "fn" / "main.c").write_text("this is not C\n")
    r = edge("build", str(tmp_path / "fn"), "--json", ok=False)
    error = json.loads(r.stdout)["error"]
    assert r.returncode == 1 and error["type"] == "build_failed" and "error" in error["output"]
    taken = edge("new", "json-fn", "--dir", str(tmp_path / "fn"), "--json", ok=False)
    assert json.loads(taken.stdout)["error"]["type"] == "config_error"


def test_bad_arguments_to_new_and_dev_are_usage_errors(tmp_path: Path) -> None:
    def usage_error(*args: str) -> str:
        r = edge(*args, "--json", ok=False)
        error = json.loads(r.stdout)["error"]
        assert r.returncode == 2 and error["type"] == "usage_error", (r.stdout, r.stderr)
        return str(error["message"])

    where = str(tmp_path / "fn")
    assert "unknown language 'rust'" in usage_error("new", "fn", "--lang", "rust", "--dir", where)
    assert "function name 'Fn'" in usage_error("new", "Fn", "--dir", where)
    assert not (tmp_path / "fn").exists()
    # Refused by the option parser, before anything is built (it used to crash in bind()).
    assert "--port" in usage_error("dev", str(tmp_path), "--port", "99999")
    people = edge("new", "fn", "--lang", "rust", "--dir", where, ok=False)
    assert people.returncode == 2 and "error: unknown language 'rust'" in people.stderr


def test_progress_goes_to_the_terminal_not_to_stdout(control: Control, project: Path) -> None:
    primary, secondary = pty.openpty()  # stderr is a terminal, stdout a pipe (a script)
    env = {**os.environ, "EDGE_CONTROL_URL": control.url, "EDGE_TOKEN": control.tokens["admin"],
           "TERM": "xterm", "COLUMNS": "120"}
    proc = subprocess.Popen([*EDGE, "deploy", str(project), "--route", "*/", "--json"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=secondary, text=True)
    os.close(secondary)
    terminal = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    stdout = proc.communicate(timeout=120)[0]
    os.close(primary)
    assert proc.returncode == 0, terminal.decode(errors="replace")
    doc = json.loads(stdout)  # one document, no progress frames mixed in
    assert doc["convergence"]["converged"]
    drawn = terminal.decode(errors="replace")
    assert f"revision {doc['revision']}" in drawn and "1/1 nodes" in drawn

    # Without a terminal, a script gets JSON on stdout and no progress on stderr either.
    quiet = edge("promote", FUNCTION, "--json", control=control, ok=False)
    assert json.loads(quiet.stdout)["error"]["type"] == "conflict"  # there is no canary
    assert quiet.stderr == ""


def test_people_get_a_summary_on_stdout_and_progress_on_stderr(
    control: Control, project: Path
) -> None:
    r = edge("deploy", str(project), "--route", "*/", control=control)
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    assert lines[0].startswith(f"default/{FUNCTION}: deployed v1: stable v1 (revision ")
    assert "1/1 nodes in" in lines[0] and lines[0].endswith(" s")
    assert f"built {FUNCTION} (c)" in r.stderr and "uploaded v1" in r.stderr
    assert "revision" in r.stderr and "1/1 nodes" in r.stderr  # the bar's last frame


class JsonLines:
    """A server started with --json: stdout read line by line, every line must be JSON."""

    def __init__(self, args: list[str], log: Path) -> None:
        with log.open("w") as stderr:
            self.proc = subprocess.Popen([*EDGE, *args, "--json"], cwd=REPO, text=True,
                                         stdout=subprocess.PIPE, stderr=stderr)
        self.log = log
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.put(line)

    def event(self, name: str, timeout_s: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            event = json.loads(line)  # a line that is not JSON fails here
            assert isinstance(event, dict) and "event" in event, line
            if event["event"] == name:
                return event
        raise AssertionError(f"no {name!r} event; stderr:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def servers() -> Any:
    started: list[JsonLines] = []

    def start(args: list[str], log: Path) -> JsonLines:
        started.append(JsonLines(args, log))
        return started[-1]

    yield start
    for s in reversed(started):
        s.stop()


def test_servers_announce_themselves_in_json_lines(servers: Any, tmp_path: Path) -> None:
    port = free_port()
    control = servers(["control", "--data", str(tmp_path / "cp"), "--listen",
                       f"127.0.0.1:{port}"], tmp_path / "control.log")
    boot = control.event("bootstrapped")
    tokens = json.loads((tmp_path / "cp" / "tokens.json").read_text())
    assert (boot["admin_token"], boot["node_token"]) == (tokens["admin"], tokens["node"])
    ready = control.event("ready")
    assert ready["url"] == f"http://127.0.0.1:{port}/" and ready["revision"] == 0
    assert ready["public_key"] == tokens["public_key"]

    node_port = free_port()
    node = servers(["node", "--control", ready["url"], "--region", "eu-west", "--id", "eu-9",
                    "--listen", f"127.0.0.1:{node_port}", "--token", tokens["node"],
                    "--public-key", tokens["public_key"], "--state-dir", str(tmp_path / "n")],
                   tmp_path / "node.log")
    up = node.event("ready")
    assert (up["node_id"], up["region"], up["restored"]) == ("eu-9", "eu-west", False)
    assert httpx.get(up["url"] + "healthz").status_code == 200

    config = tmp_path / "traffic.toml"
    config.write_text((REPO / "bench" / "gdnsd" / "traffic.toml").read_text())
    dns_server = servers(["dns", "--config", str(config), "--port", "0", "--geoip-db",
                          str(REPO.parent / "shared" / "geoip" / "GeoIP2-City-Test.mmdb")],
                         tmp_path / "dns.log")
    listening = dns_server.event("ready")
    assert listening["zone"] == "edge.test." and listening["host"] == "127.0.0.1"
    answer = dns.query.udp(dns.message.make_query("edge.test.", "SOA"), "127.0.0.1",
                           port=listening["port"], timeout=5)
    assert answer.answer  # the port in the event is the one bound
    dns_server.proc.send_signal(signal.SIGTERM)
    assert dns_server.event("stopping", 10) == {"event": "stopping"}
    assert dns_server.proc.wait(10) == 0


@pytest.mark.toolchain
def test_dev_reports_builds_as_json_lines(servers: Any, tmp_path: Path) -> None:
    project = hello_project(tmp_path)
    port = free_port()
    dev = servers(["dev", str(project), "--port", str(port)], tmp_path / "dev.log")
    built = dev.event("built")
    assert built["function"] == FUNCTION and built["size_bytes"] > 0
    ready = dev.event("ready")
    assert ready["url"] == f"http://127.0.0.1:{port}/"
    assert httpx.get(ready["url"]).text == "Hello from C!\n"
    (project / "main.c").write_text("not C\n")
    assert dev.event("change")["event"] == "change"
    failed = dev.event("build_failed")
    assert failed["type"] == "build_failed" and failed["serving_last_good"] and failed["output"]


@pytest.mark.toolchain
def test_dev_on_ipv6_loopback_announces_a_url_that_works(servers: Any, tmp_path: Path) -> None:
    project = hello_project(tmp_path)
    port = free_port()
    dev = servers(["dev", str(project), "--host", "::1", "--port", str(port)],
                  tmp_path / "dev.log")  # fmt: skip
    ready = dev.event("ready")
    assert ready["url"] == f"http://[::1]:{port}/"  # was http://::1:PORT/, not a URL
    assert httpx.get(ready["url"]).text == "Hello from C!\n"


@pytest.mark.toolchain
def test_up_announces_the_stack_in_json_lines(servers: Any, tmp_path: Path) -> None:
    control_port, node_port, dns_port = free_port(), free_port(), free_port()
    up = servers(["up", "--state-dir", str(tmp_path / "state"), "--control-port",
                  str(control_port), "--node-port", str(node_port), "--dns-port", str(dns_port)],
                 tmp_path / "up.log")
    ready = up.event("ready", 240)
    assert ready["control_url"] == f"http://127.0.0.1:{control_port}"
    assert ready["dns"] == f"127.0.0.1:{dns_port}" and ready["host"] == "hello.edge.test"
    assert ready["regions"] == {"us-east": "127.0.0.11", "eu-west": "127.0.0.12",
                                "ap-south": "127.0.0.13"}
    served = httpx.get(f"http://{ready['regions']['eu-west']}:{node_port}/",
                       headers={"host": ready["host"]})
    assert served.status_code == 200
    where = ["--control", ready["control_url"], "--token", ready["admin_token"]]
    listed = edge_json("regions", *where)["regions"]
    assert {(r["name"], r["state"], r["healthy_nodes"]) for r in listed} == {
        ("us-east", "active", 1), ("eu-west", "active", 1), ("ap-south", "active", 1)
    }
    up.proc.send_signal(signal.SIGINT)
    assert up.event("stopped", 60) == {"event": "stopped"}
    assert up.proc.wait(60) == 0


def test_a_taken_port_is_a_listen_failed_error_and_never_ready(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        r = edge("control", "--data", str(tmp_path / "cp"), "--listen", listen, "--json",
                 ok=False)
        node = edge("node", "--control", "http://127.0.0.1:1", "--token", "t", "--public-key",
                    "00" * 32, "--listen", listen, "--state-dir", str(tmp_path / "n"), "--json",
                    ok=False)
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e.get("event") for e in events] == ["bootstrapped", None]  # no "ready"
    error = events[-1]["error"]
    assert r.returncode == 1 and error["type"] == "listen_failed"
    assert error["message"].startswith(f"cannot listen on {listen}: ")
    assert node.returncode == 1
    assert json.loads(node.stdout)["error"]["type"] == "listen_failed"


def test_a_listen_address_without_a_usable_port_is_a_config_error(tmp_path: Path) -> None:
    """Port 99999 used to end in a traceback (OverflowError from bind), and `edge control`
    made its data directory and tokens first; a port that is no number said "invalid literal
    for int()"."""
    for listen in ("127.0.0.1:99999", "nope", "::1:80"):
        r = edge("control", "--data", str(tmp_path / "cp"), "--listen", listen, "--json",
                 ok=False)
        error = json.loads(r.stdout)["error"]  # one document: nothing was bootstrapped
        assert r.returncode == 1 and error["type"] == "config_error", (listen, r.stdout)
        assert error["message"].startswith("--listen") and "Traceback" not in r.stderr
        assert not (tmp_path / "cp").exists()
    node_toml = tmp_path / "node.toml"
    node_toml.write_text('[node]\nlisten = "127.0.0.1:99999"\n')
    r = edge("node", "--config", str(node_toml), "--json", ok=False)
    assert r.returncode == 1 and json.loads(r.stdout)["error"] == {
        "type": "config_error",
        "message": f"{node_toml}: node.listen must be HOST:PORT (port 1-65535), "
                   "got '127.0.0.1:99999'",
    }
    r = edge("node", "--control", "http://127.0.0.1:1", "--token", "t", "--public-key",
             "00" * 32, "--listen", "127.0.0.1:http", "--state-dir", str(tmp_path / "n"),
             ok=False)
    assert r.returncode == 1 and r.stderr.startswith("error: --listen must be HOST:PORT")


def test_a_damaged_control_database_is_a_config_error(tmp_path: Path) -> None:
    """It was a traceback ending in "DatabaseError: file is not a database"."""
    data = tmp_path / "cp"
    data.mkdir()
    (data / "control.db").write_bytes(b"not SQLite at all " * 300)
    r = edge("control", "--data", str(data), "--listen", f"127.0.0.1:{free_port()}", "--json",
             ok=False)
    error = json.loads(r.stdout)["error"]
    assert r.returncode == 1 and error["type"] == "config_error" and "Traceback" not in r.stderr
    assert error["message"] == (
        f"cannot use the control plane's database {data / 'control.db'}: file is not a "
        "database (restore it from a backup, or start with an empty --data directory)")
    assert not (data / "tokens.json").exists()  # nothing bootstrapped on top of it
