"""A running node takes new secrets key files without a restart: a control plane and a node as
real processes on 127.0.0.1.

A key rotation reaches the node through its key files alone (the heartbeat's look, then
SIGHUP), and the node serves the revision sealed under the new key with the old key gone. A key
file broken on a running node keeps the keys it had (reported in /readyz, `edge status` and its
log) while it serves on; another key makes the secret's function answer 503; the right key
again brings it back.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.control.client import ControlClient
from edge.control.sealing import KEY_FILE, SecretsKey
from edge.node.follower import PUBLIC_SECRET_MESSAGE

from .cluster import Control, follower, start_control
from .conftest import EXAMPLES, NodeFactory, Proc, wait_until
from .test_secrets_cluster import FUNCTION, deploy_with_secret, rotate

pytestmark = pytest.mark.toolchain

SECRET = "reloaded-greeting-7d21"
LOOK_S = 20  # the node looks at its key files every heartbeat (5 s); slack for a busy machine


def put(path: Path, text: str) -> None:
    """Replaces `path` the way to do it on a running node: a new file renamed over it."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(text)
    os.replace(fresh, path)


def readyz(node: Proc) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(node.url + "/readyz").json()
    return body


def status_error(client: ControlClient, node_id: str) -> str:
    nodes = {n["id"]: n for n in client.status()["nodes"]}
    return str(nodes[node_id]["last_error"])


def keyed_follower(
    start_node: NodeFactory, control: Control, node_id: str, tmp_path: Path
) -> tuple[Proc, Path, Path]:
    """A node with key files of its own: the current one a copy of the control plane's, the
    previous one named but absent (no rotation runs yet). Returns it and the two paths."""
    keys = tmp_path / "node-keys"
    keys.mkdir()
    current, previous = keys / "current.key", keys / "previous.key"
    put(current, (control.data / KEY_FILE).read_text())
    node = follower(start_node, control, node_id, "eu-west", tmp_path / "state",
                    secrets_key=False,
                    extra=f'secrets_key_file = "{current}"\n'
                          f'previous_secrets_key_file = "{previous}"\n')
    return node, current, previous


def test_a_rotation_reaches_a_running_node_through_its_key_files(
    control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    old = SecretsKey.load(control.data / KEY_FILE)
    old_text = (control.data / KEY_FILE).read_text()
    node, current, previous = keyed_follower(start_node, control, "reload-1", tmp_path)
    deploy_with_secret(control, tmp_path, SECRET)
    assert httpx.get(node.url + "/").text == SECRET + "\n"
    assert readyz(node)["secrets_keys"] == {"key_ids": [old.key_id], "error": ""}

    # 1. With the control plane stopped, everything is sealed again under a new key.
    control.proc.stop()
    new_file = tmp_path / "new.key"
    r = rotate(control, new_file, "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    new = SecretsKey.load(new_file)
    # 2. The node's files replaced, previous first so the old key is never missing; no restart:
    # the node notices at its next look.
    put(previous, old_text)
    put(current, new_file.read_text())
    wait_until(lambda: sorted(readyz(node)["secrets_keys"]["key_ids"])
               == sorted([old.key_id, new.key_id]), LOOK_S, "new key files taken", node)
    assert readyz(node)["secrets_keys"]["error"] == ""
    assert "secrets key files read again" in node.log()
    # It serves on what it kept, still sealed under the old key.
    assert httpx.get(node.url + "/").text == SECRET + "\n"

    # 3. The control plane starts with the new key; the running node fetches the new revisions.
    restarted = start_control(control.data, control.port, tmp_path / "control-2.log",
                              ("--secrets-key", str(new_file)))
    try:
        with restarted.client() as client:
            assert client.wait_for(result["revisions"][-1], 60).converged
            assert readyz(node)["revision"] == result["revisions"][-1]
            assert httpx.get(node.url + "/").text == SECRET + "\n"
            # 4. The old key dropped (its file deleted) and SIGHUP: the node opens what it
            # serves again with the new key alone, so that is what the revision is sealed with.
            previous.unlink()
            node.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: readyz(node)["secrets_keys"]["key_ids"] == [new.key_id], LOOK_S,
                       "old key dropped", node)
            assert httpx.get(node.url + "/").text == SECRET + "\n"
            ready = readyz(node)
            assert ready["unavailable"] == [] and ready["secrets_keys"]["error"] == ""
            assert status_error(client, "reload-1") == ""
        assert node.proc.poll() is None  # the same process throughout
        assert "secret_unavailable" not in node.log() and SECRET not in node.log()
    finally:
        restarted.proc.stop()


def test_a_bad_key_file_on_a_running_node_keeps_its_keys_until_it_is_fixed(
    control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    good_text = (control.data / KEY_FILE).read_text()
    good = SecretsKey.load(control.data / KEY_FILE)
    key_file = tmp_path / "node.key"
    put(key_file, good_text)
    node = follower(start_node, control, "reload-2", "eu-west", tmp_path / "state",
                    secrets_key=False, extra=f'secrets_key_file = "{key_file}"\n')
    deploy_with_secret(control, tmp_path, SECRET)
    assert httpx.get(node.url + "/").text == SECRET + "\n"

    with control.client() as client:
        # Broken in place (an editor's half-saved file): the keys it had stay, it says why.
        key_file.write_text("not a key\n")
        wait_until(lambda: readyz(node)["secrets_keys"]["error"], LOOK_S, "bad key seen", node)
        keys = readyz(node)["secrets_keys"]
        assert keys["key_ids"] == [good.key_id]
        assert "node.key" in keys["error"] and "64 hex digits" in keys["error"]
        assert f"still opening secrets with key {good.key_id}" in keys["error"]
        assert "new secrets key files not taken" in node.log()
        assert httpx.get(node.url + "/").text == SECRET + "\n"
        assert readyz(node)["ready"]
        wait_until(lambda: "node.key" in status_error(client, "reload-2"), LOOK_S,
                   "key error in edge status", node)
        # Missing altogether: the same, with that reason.
        key_file.unlink()
        node.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "No such file" in readyz(node)["secrets_keys"]["error"], LOOK_S,
                   "missing key seen", node)
        assert httpx.get(node.url + "/").text == SECRET + "\n"

        # Another (good) key: the secret no longer opens; that function alone answers 503.
        other = tmp_path / "other.key"
        SecretsKey.load_or_create(other)
        put(key_file, other.read_text())
        node.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: httpx.get(node.url + "/").status_code == 503, LOOK_S,
                   "secret unavailable under another key", node)
        r = httpx.get(node.url + "/")
        assert r.json() == {**r.json(), "error": "secret_unavailable",
                            "message": PUBLIC_SECRET_MESSAGE}
        assert httpx.get(node.url + "/hello").text == "Hello from C!\n"
        ready = readyz(node)
        assert ready["unavailable"] == [f"default/{FUNCTION}"]
        assert ready["secrets_keys"] == {"key_ids": [SecretsKey.load(other).key_id], "error": ""}
        wait_until(lambda: good.key_id in status_error(client, "reload-2"), LOOK_S,
                   "secret error in edge status", node)

        # The right key back, left for the heartbeat's look: served again, errors gone.
        put(key_file, good_text)
        wait_until(lambda: httpx.get(node.url + "/").text == SECRET + "\n", LOOK_S,
                   "secret served again", node)
        ready = readyz(node)
        assert ready["unavailable"] == [] and ready["secrets_keys"]["error"] == ""
        wait_until(lambda: status_error(client, "reload-2") == "", LOOK_S, "status clear", node)
    assert f"default/{FUNCTION}: its secrets open again" in node.log()
    assert node.proc.poll() is None and SECRET not in node.log()


def test_sighup_on_a_node_that_follows_no_control_plane_leaves_it_serving(
    start_node: NodeFactory, built: Callable[[Path], Path]
) -> None:
    """No key files to look at: the signal is noted, not the end of the node (its default
    action), so `kill -HUP` sent to every node during a rotation stops none."""
    project = EXAMPLES / "c" / "hello"
    built(project)
    node = start_node(
        f'[[function]]\nproject = "{project}"\n\n[[route]]\nroute = "*/"\nfunction = "hello-c"\n'
    )
    for count in (1, 2):  # one at a time: two pending signals are one
        node.proc.send_signal(signal.SIGHUP)
        wait_until(lambda c=count: node.log().count("SIGHUP") == c, LOOK_S, "SIGHUP noted", node)
    assert "follows no control plane: no secrets key files to read" in node.log()
    assert httpx.get(node.url + "/").text == "Hello from C!\n"
    assert node.proc.poll() is None
