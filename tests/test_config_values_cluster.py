"""Deploy-time config values end to end: a control plane and a node as real processes on
127.0.0.1 serving the C config example, driven by the `edge` CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from .cluster import Control, cache_lookups, converge, follower
from .conftest import EXAMPLES, REPO, NodeFactory

pytestmark = pytest.mark.toolchain

FUNCTION = "config-c"
SECRET = "tok-3f9a-never-shown"
DEFAULT = "Hello from C config!\n"  # the example's edge.toml [config] greeting


def cli(control: Control, *args: str, token: str | None = None,
        ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGE_CONTROL_URL": control.url,
           "EDGE_TOKEN": token or control.tokens["admin"]}
    r = subprocess.run([sys.executable, "-m", "edge", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=180)
    assert (r.returncode == 0) == ok, (r.returncode, r.stdout, r.stderr)
    return r


def cli_json(control: Control, *args: str) -> Any:
    return json.loads(cli(control, *args, "--json").stdout)


def test_values_reach_the_node_without_a_compile_and_secrets_stay_hidden(
    control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    node = follower(start_node, control, "cfg-1", "eu-west", tmp_path / "cfg-1")
    project = tmp_path / "config"
    shutil.copytree(EXAMPLES / "c" / "config", project, ignore=shutil.ignore_patterns("build"))

    # `edge deploy --var`: the value comes with the deploy (two revisions, one snapshot).
    d = cli_json(control, "deploy", str(project), "--route", "*/", "--var", "greeting=from var")
    assert d["convergence"]["converged"]
    r = httpx.get(node.url + "/")
    assert r.text == "from var\n" and r.headers["x-edge-version"] == f"default/{FUNCTION}@1"
    lookups = cache_lookups(node)

    with control.client() as client:
        changed = cli_json(control, "config", "set", FUNCTION, "greeting=changed")
        converge(client, changed)
        r = httpx.get(node.url + "/")
        assert r.text == "changed\n" and r.headers["x-edge-version"] == f"default/{FUNCTION}@1"

        secret = cli_json(control, "config", "set", FUNCTION, f"greeting={SECRET}", "--secret")
        assert secret["values"] == [{"key": "greeting", "secret": True, "value": None}]
        converge(client, secret)
        assert httpx.get(node.url + "/").text == SECRET + "\n"  # the function reads it
        listed = cli(control, "config", "list", FUNCTION).stdout
        assert "greeting" in listed and "(secret)" in listed and SECRET not in listed
        assert SECRET not in json.dumps(cli_json(control, "config", "list", FUNCTION))
        assert SECRET not in json.dumps(client.status())
        assert SECRET not in json.dumps(client.config(FUNCTION))

        # Unset: the version's own edge.toml value applies again.
        gone = cli_json(control, "config", "unset", FUNCTION, "greeting")
        assert gone["values"] == []
        converge(client, gone)
        assert httpx.get(node.url + "/").text == DEFAULT
        assert "edge.toml v1" in cli(control, "config", "list", FUNCTION).stdout
    # Three value changes, not one compile-cache lookup: the same version stayed loaded.
    assert cache_lookups(node) == lookups
    assert SECRET not in control.proc.log() and SECRET not in node.log()


def test_config_commands_refuse_what_the_token_may_not_do(
    control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    project = tmp_path / "config"
    shutil.copytree(EXAMPLES / "c" / "config", project, ignore=shutil.ignore_patterns("build"))
    follower(start_node, control, "cfg-2", "eu-west", tmp_path / "cfg-2")
    cli(control, "deploy", str(project), "--route", "*/")
    with control.client() as admin:
        reader = admin.create_token("default", ["read"], name="reader")["token"]
        other = admin.create_token(admin.create_tenant("other")["name"], ["deploy", "read"],
                                   name="other")["token"]
    r = cli(control, "config", "set", FUNCTION, "a=b", token=reader, ok=False)
    assert "scope" in r.stderr
    r = cli(control, "config", "list", FUNCTION, token=other, ok=False)
    assert "no function" in r.stderr
    r = cli(control, "config", "set", FUNCTION, "bad key=v", ok=False)
    assert "bad config key" in r.stderr
    r = cli(control, "config", "set", FUNCTION, "novalue", ok=False)
    assert r.returncode == 2 and "KEY=VALUE" in r.stderr
    r = cli(control, "deploy", str(project), "--canary", "10", "--var", "a=b", ok=False)
    assert r.returncode == 2 and "--var" in r.stderr
